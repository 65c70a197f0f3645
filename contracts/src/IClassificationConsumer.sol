// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title IClassificationConsumer
/// @notice Implemented by contracts that request classifications from the VerinferOracle.
/// @dev The oracle calls `onClassification` once per fulfilled request, with at most the gas
///      the requester asked for (`callbackGasLimit`). A revert here does NOT undo the
///      fulfilment: the oracle emits `CallbackFailed` and keeps the answer. Implementations
///      must check `msg.sender == oracle`.
interface IClassificationConsumer {
    /// @param requestId the id returned by `requestClassification`
    /// @param modelId   the model that answered
    /// @param label     the predicted class index (proven by a zk proof or signed by the
    ///                  model's authorised signer, per the model's policy)
    function onClassification(bytes32 requestId, bytes32 modelId, uint256 label) external;
}
