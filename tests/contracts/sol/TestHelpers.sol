// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

// Test-only contracts: a verifier stand-in and misbehaving requesters/fulfillers.

import {IClassificationConsumer} from "./IClassificationConsumer.sol";
import {VerinferOracle} from "./VerinferOracle.sol";

/// Answers verifyProof with a set result, or reverts (mode 2).
contract MockVerifier {
    uint256 public mode = 1; // 0: return false, 1: return true, 2: revert
    function setMode(uint256 m) external { mode = m; }
    function verifyProof(bytes calldata, uint256[] calldata) external view returns (bool) {
        if (mode == 2) revert("mock: bad proof");
        return mode == 1;
    }
}

/// Requests, then misbehaves in its callback; has no receive(), so refunds to it fail.
contract BadConsumer is IClassificationConsumer {
    VerinferOracle public immutable oracle;
    uint256 public behaviour; // 0: revert, 1: burn all gas, 2: accept
    bytes32 public lastRequestId;
    uint256 public calls;
    constructor(VerinferOracle o) { oracle = o; }
    function setBehaviour(uint256 b) external { behaviour = b; }
    function classify(bytes32 modelId, int256[] calldata input, uint32 gasLimit) external payable {
        lastRequestId = oracle.requestClassification{value: msg.value}(modelId, input, gasLimit);
    }
    function cancel(bytes32 requestId) external { oracle.cancelRequest(requestId); }
    function onClassification(bytes32, bytes32, uint256) external {
        calls += 1;
        if (behaviour == 0) revert("consumer: no");
        if (behaviour == 1) { while (true) {} }
    }
}

/// Fulfils by signature but cannot receive the fee.
contract NonPayableFulfiller {
    function fulfil(VerinferOracle o, bytes32 requestId, uint256 label, uint256 deadline, bytes calldata sig)
        external
    {
        o.fulfillWithSignature(requestId, label, deadline, sig);
    }
}
