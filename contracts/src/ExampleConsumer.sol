// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IClassificationConsumer} from "./IClassificationConsumer.sol";
import {VerinferOracle} from "./VerinferOracle.sol";

/// @title ExampleConsumer
/// @notice How a contract uses the VerinferOracle: request a classification (optionally with a
///         fee), receive the label in `onClassification`, cancel and recover the fee if nobody
///         answers in time. It serves its owner alone: only the owner asks, cancels and
///         withdraws, so a fee refunded here was the owner's (a consumer open to anyone would
///         have to record who paid for each request and refund that account).
contract ExampleConsumer is IClassificationConsumer {
    /// @notice onClassification: the caller is not the oracle.
    error OnlyOracle(address caller);
    /// @notice classify, cancel, withdraw: the caller is not this contract's owner.
    error OnlyOwner(address caller);
    /// @notice withdraw: sending the balance to the owner failed.
    error WithdrawFailed();

    struct Answer {
        bool answered;
        uint248 label;
    }

    VerinferOracle public immutable oracle;
    bytes32 public immutable modelId;
    uint32 public immutable callbackGasLimit;
    address public immutable owner;

    mapping(bytes32 => Answer) public answers;
    bytes32 public lastRequestId;

    event Requested(bytes32 indexed requestId);
    event Classified(bytes32 indexed requestId, uint256 label);

    constructor(VerinferOracle oracle_, bytes32 modelId_, uint32 callbackGasLimit_) {
        oracle = oracle_;
        modelId = modelId_;
        callbackGasLimit = callbackGasLimit_;
        owner = msg.sender;
    }

    /// @notice Ask the oracle to classify `input` (fixed-point at the model's input scale).
    ///         Any ETH sent is passed on as the fee.
    function classify(int256[] calldata input) external payable returns (bytes32 requestId) {
        if (msg.sender != owner) revert OnlyOwner(msg.sender);
        requestId = oracle.requestClassification{value: msg.value}(modelId, input, callbackGasLimit);
        lastRequestId = requestId;
        emit Requested(requestId);
    }

    /// @inheritdoc IClassificationConsumer
    function onClassification(bytes32 requestId, bytes32, uint256 label) external override {
        if (msg.sender != address(oracle)) revert OnlyOracle(msg.sender);
        answers[requestId] = Answer(true, uint248(label));
        emit Classified(requestId, label);
    }

    /// @notice Cancel an unanswered request after the oracle's timeout; the fee comes back here.
    function cancel(bytes32 requestId) external {
        if (msg.sender != owner) revert OnlyOwner(msg.sender);
        oracle.cancelRequest(requestId);
    }

    /// @notice Send refunded fees to the owner.
    function withdraw() external {
        if (msg.sender != owner) revert OnlyOwner(msg.sender);
        (bool ok,) = owner.call{value: address(this).balance}("");
        if (!ok) revert WithdrawFailed();
    }

    receive() external payable {}
}
