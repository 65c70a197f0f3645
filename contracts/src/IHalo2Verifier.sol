// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title IHalo2Verifier
/// @notice The function of the per-model verifier that EZKL generates (`Halo2Verifier`).
/// @dev Returns true on a valid proof; the generated code reverts with empty data on an
///      invalid one. `instances` are BN254 scalar-field elements: for a circuit with public
///      input and public outputs, `[input..., logits..., label]`.
interface IHalo2Verifier {
    function verifyProof(bytes calldata proof, uint256[] calldata instances) external returns (bool);
}
