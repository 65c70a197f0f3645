// SPDX-License-Identifier: Apache-2.0
// Compiled by the pinned solcjs 0.8.37 (package.json), optimizer on, 200 runs, EVM "cancun"
// (contracts/solc.py says why). The pragma is a floor, not the pin: 0.8.24 is the first solc
// whose default EVM is cancun.
pragma solidity ^0.8.24;

import {IClassificationConsumer} from "./IClassificationConsumer.sol";
import {IHalo2Verifier} from "./IHalo2Verifier.sol";

/// @title VerinferOracle
/// @notice On-chain classification by registered models. A contract requests a
///         classification of a fixed-point input; anyone answers it with a zk proof checked by
///         the model's EZKL verifier, or (where the model's policy allows) with an EIP-712
///         signature of the model's authorised signer; the requester is called back with the
///         label.
/// @dev Inputs are the model's input as fixed-point integers at the model's input scale,
///      flattened row-major (docs/formats.md). A request stores only their commitment
///      `keccak256(abi.encode(int256[]))`; the input itself is in the request's event.
///      Every failure is a custom error, listed below with who throws it.
///      Owner powers are bounded: a request is checked against the verifier, signer and policy
///      recorded when it was made; a model update takes effect only `updateDelay` seconds after
///      it is announced (`pendingUpdates`), and ownership moves in two steps.
contract VerinferOracle {
    // ---------------------------------------------------------------- types

    /// @notice How a model's requests may be answered. `Unregistered` marks an unknown model.
    enum Policy {
        Unregistered,
        ProofOnly,
        SignatureOnly,
        ProofOrSignature
    }

    /// @notice Life of a request: `None` (unknown id) -> `Open` -> `Fulfilled` | `Cancelled`.
    enum Status {
        None,
        Open,
        Fulfilled,
        Cancelled
    }

    /// @dev Slot 0 is all the signature path reads.
    struct Model {
        address signer; // authorised EIP-712 signer (zero if the policy has no signature path)
        uint32 inputLength; // number of int256 inputs (the circuit's public inputs, in order)
        uint8 inputScale; // fixed-point scale: q = round(x * 2**inputScale); for clients
        Policy policy;
        address verifier; // EZKL Halo2Verifier for this model (zero if the policy has no proof path)
        uint32 numInstances; // public instances of a proof: inputs, outputs, the label last
        uint96 minFee; // wei a request must bring at least
        uint128 maxAbsInput; // |input[i]| <= this: what the circuit's range checks represent
        // One slot: a fulfilment's fee is one read and one write of it (pull payments).
        address payee; // withdrawFees pays the model's accrued fees here (never to msg.sender)
        uint96 accruedFees; // wei earned by fulfilments and not yet withdrawn to the payee
    }

    struct Request {
        address requester; // called back; the only one who may cancel
        uint40 createdAt; // block.timestamp of the request
        uint32 callbackGasLimit; // gas given to the callback
        Status status;
        bytes32 modelId;
        bytes32 inputCommitment; // keccak256(abi.encode(int256[] input))
        uint96 fee; // wei held in escrow: accrued to the model's payee, or refunded on cancel
        address verifier; // the model's verifier when the request was made: the one that checks it
        address signer; // the model's signer when the request was made
        Policy policy; // the model's policy when the request was made
    }

    /// @notice A model update announced by the owner; anyone applies it from `effectiveAt`.
    struct ModelUpdate {
        address verifier;
        Policy policy;
        uint40 effectiveAt; // zero: nothing pending
        address signer;
    }

    // ------------------------------------------------------------ constants

    /// @notice EIP-712 type of a signed answer. docs/formats.md "EIP-712 classification".
    bytes32 public constant CLASSIFICATION_TYPEHASH = keccak256(
        "Classification(bytes32 modelId,bytes32 inputCommitment,uint256 label,bytes32 requestId,uint256 deadline)"
    );
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant NAME_HASH = keccak256("verinfer");
    bytes32 private constant VERSION_HASH = keccak256("1");

    /// @notice Order of BN254's scalar field: EZKL's public instances are elements of it.
    uint256 public constant BN254_R =
        21888242871839275222246405745257275088548364400416034343698204186575808495617;
    uint256 private constant HALF_R = BN254_R / 2;
    /// @notice Inputs must satisfy |x| < MAX_ABS_INPUT, so that x -> x mod r is one-to-one.
    uint256 public constant MAX_ABS_INPUT = 2 ** 128;
    /// @notice Labels above this are refused (a label is a class index).
    uint256 public constant MAX_LABEL = type(uint32).max;
    /// @notice Cap on the gas a requester may ask for its callback.
    uint32 public constant MAX_CALLBACK_GAS_LIMIT = 2_500_000;
    /// @dev Gas kept back around the callback for the exact-gas check and the call itself.
    uint256 private constant GAS_FOR_CALL_EXACT_CHECK = 5_000;
    uint256 private constant SECP256K1N_HALF =
        0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    // ---------------------------------------------------------------- state

    address public owner;
    /// @notice The address `transferOwnership` named; it becomes owner by `acceptOwnership`.
    address public pendingOwner;
    /// @notice Seconds after a request's creation before its requester may cancel it.
    uint256 public immutable requestTimeout;
    /// @notice Seconds between `updateModel` (announced) and the update taking effect.
    uint256 public immutable updateDelay;
    uint256 public requestCount;
    mapping(bytes32 => Model) public models;
    mapping(bytes32 => Request) public requests;
    mapping(bytes32 => ModelUpdate) public pendingUpdates;

    uint256 private immutable _cachedChainId;
    bytes32 private immutable _cachedDomainSeparator;

    // --------------------------------------------------------------- events

    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);
    event OwnershipTransferStarted(address indexed previousOwner, address indexed newOwner);
    event ModelRegistered(
        bytes32 indexed modelId,
        address verifier,
        uint32 inputLength,
        uint8 inputScale,
        Policy policy,
        address signer,
        uint32 numInstances,
        uint128 maxAbsInput,
        uint96 minFee
    );
    event MinFeeSet(bytes32 indexed modelId, uint96 minFee);
    /// @notice Fees of the model's fulfilments accrue to `payee` from now on.
    event PayeeSet(bytes32 indexed modelId, address payee);
    /// @notice withdrawFees (or setPayee settling the old payee) paid `amount` wei to `payee`.
    event FeesWithdrawn(bytes32 indexed modelId, address indexed payee, uint256 amount);
    /// @notice An update is announced: requesters see it `updateDelay` seconds before it applies.
    event ModelUpdateScheduled(
        bytes32 indexed modelId, address verifier, Policy policy, address signer, uint256 effectiveAt
    );
    event ModelUpdateCancelled(bytes32 indexed modelId);
    event ModelUpdated(bytes32 indexed modelId, address verifier, Policy policy, address signer);
    /// @notice verifyInference accepted a proof (ERC-7992 shape): `output` is abi.encode(label).
    event InferenceVerified(
        bytes32 indexed modelId, bytes32 indexed inputCommitment, bytes32 indexed outputHash, address caller
    );
    /// @notice A new request: relayers watch for this. `input` is what a proof must carry as its
    ///         public inputs and what a signer must have classified.
    event ClassificationRequested(
        bytes32 indexed requestId,
        bytes32 indexed modelId,
        address indexed requester,
        int256[] input,
        bytes32 inputCommitment,
        uint256 fee,
        uint32 callbackGasLimit
    );
    event ClassificationFulfilled(
        bytes32 indexed requestId,
        bytes32 indexed modelId,
        address indexed fulfiller,
        uint256 label,
        bool byProof
    );
    /// @notice The requester's callback reverted or ran out of gas; the fulfilment stands.
    event CallbackFailed(bytes32 indexed requestId);
    event RequestCancelled(bytes32 indexed requestId, uint256 refund);

    // --------------------------------------------------------------- errors
    // Each says who throws it.

    /// @notice Thrown by owner-only functions when the caller is not the owner.
    error NotOwner(address caller);
    /// @notice transferOwnership: the new owner is the zero address.
    error ZeroAddress();
    /// @notice acceptOwnership: the caller is not the pending owner.
    error NotPendingOwner(address caller);
    /// @notice applyModelUpdate, cancelModelUpdate: no update is pending for this model.
    error NoPendingUpdate(bytes32 modelId);
    /// @notice applyModelUpdate: the update's delay has not passed yet.
    error UpdateNotReady(uint256 effectiveAt);
    /// @notice verifyInference: `output` is not abi.encode(uint256 label), or `proof` is not
    ///         abi.encode(bytes proofBytes, uint256[] instances).
    error MalformedInference();
    /// @notice verifyInference: the proof's label (last instance) is not `output`'s.
    error OutputMismatch();
    /// @notice registerModel: the model id is already registered.
    error ModelAlreadyRegistered(bytes32 modelId);
    /// @notice requestClassification, updateModel, verifyInference: no model has this id.
    error UnknownModel(bytes32 modelId);
    /// @notice registerModel, updateModel: policy `Unregistered` is not a policy.
    error InvalidPolicy();
    /// @notice registerModel: a model needs at least one input.
    error InvalidInputLength();
    /// @notice registerModel: numInstances < inputLength + 1 (inputs and a label at least).
    error InvalidInstanceCount(uint256 numInstances, uint256 minimum);
    /// @notice registerModel: maxAbsInput is zero.
    error InvalidInputBound();
    /// @notice requestClassification: msg.value is below the model's minimum fee.
    error FeeTooLow(uint256 sent, uint256 minimum);
    /// @notice registerModel, updateModel: the policy has a proof path but `verifier` has no code.
    error VerifierHasNoCode(address verifier);
    /// @notice registerModel, updateModel: the policy has a signature path but no signer.
    error ZeroSigner();
    /// @notice requestClassification: the input has the wrong number of elements.
    error InputLengthMismatch(uint256 expected, uint256 actual);
    /// @notice requestClassification: |input[index]| > the model's maxAbsInput (the circuit
    ///         cannot represent it: no proof could ever answer).
    error InputOutOfRange(uint256 index, int256 value);
    /// @notice requestClassification: callbackGasLimit > MAX_CALLBACK_GAS_LIMIT.
    error CallbackGasLimitTooHigh(uint256 requested, uint256 max);
    /// @notice fulfill*, cancelRequest: no request has this id.
    error UnknownRequest(bytes32 requestId);
    /// @notice fulfill*, cancelRequest: the request was already fulfilled (double fulfilment,
    ///         or a replay of a fulfilment).
    error AlreadyFulfilled(bytes32 requestId);
    /// @notice fulfill*, cancelRequest: the request was cancelled.
    error RequestIsCancelled(bytes32 requestId);
    /// @notice fulfillWithProof: the request's policy is SignatureOnly; verifyInference: the
    ///         model's policy is SignatureOnly.
    error ProofPathDisabled(bytes32 modelId);
    /// @notice fulfillWithSignature: the request's policy is ProofOnly.
    error SignaturePathDisabled(bytes32 modelId);
    /// @notice fulfillWithProof, verifyInference: not the model's number of public instances.
    error InstanceCountMismatch(uint256 expected, uint256 actual);
    /// @notice fulfillWithProof, verifyInference: instance `index` is not a field element.
    error InstanceNotInField(uint256 index);
    /// @notice fulfillWithProof: the proof's public inputs are not the requested input (a proof
    ///         for another input, or another model's input layout); verifyInference: they are
    ///         not the input `inputCommitment` commits to. The arg is the request id (zero from
    ///         verifyInference).
    error InputMismatch(bytes32 requestId);
    /// @notice fulfill*, verifyInference: the label is above MAX_LABEL (in a proof: the last
    ///         instance).
    error LabelOutOfRange(uint256 label);
    /// @notice fulfillWithProof: the verifier recorded with the request rejected the proof;
    ///         verifyInference: the model's verifier did (forged or altered proof, or a proof made
    ///         for another circuit). The arg is the request id (zero from verifyInference).
    error ProofRejected(bytes32 requestId);
    /// @notice fulfillWithSignature: block.timestamp > deadline.
    error SignatureExpired(uint256 deadline, uint256 nowTimestamp);
    /// @notice fulfillWithSignature: not 65 bytes, v not 27/28, high s, or no signer recovered.
    error InvalidSignature();
    /// @notice fulfillWithSignature: the signature is valid but not by the request's signer (this
    ///         includes a signature replayed from another request, model, input or label).
    error WrongSigner(address recovered, address expected);
    /// @notice fulfill*: too little gas left to give the callback its full callbackGasLimit
    ///         (stops a fulfiller from starving the callback on purpose).
    error InsufficientGasForCallback(uint256 callbackGasLimit);
    /// @notice withdrawFees: the payee did not accept the accrued fees (they stay accrued).
    error FeeTransferFailed(address payee);
    /// @notice withdrawFees: the model has no accrued fees.
    error NoFeesAccrued(bytes32 modelId);
    /// @notice fulfillWithProof, verifyInference: the verifier ran out of gas (the transaction
    ///         was sent with too little gas); says nothing about the proof. The arg is the
    ///         request id (zero from verifyInference).
    error VerifierOutOfGas(bytes32 requestId);
    /// @notice cancelRequest: the caller is not the requester.
    error NotRequester(address caller, address requester);
    /// @notice cancelRequest: the timeout has not passed yet.
    error CancelTooEarly(uint256 cancellableAt);
    /// @notice cancelRequest: the refund could not be sent to the requester.
    error RefundFailed();
    /// @dev An update delay must fit the 40-bit `effectiveAt` it is added to (2^32 s: 136 years).
    error UpdateDelayTooLong(uint256 updateDelay);

    // ---------------------------------------------------------- constructor

    /// @param requestTimeout_ seconds after which a requester may cancel an unanswered request
    /// @param updateDelay_ seconds between announcing a model update and its taking effect
    constructor(uint256 requestTimeout_, uint256 updateDelay_) {
        if (updateDelay_ > type(uint32).max) revert UpdateDelayTooLong(updateDelay_);
        owner = msg.sender;
        requestTimeout = requestTimeout_;
        updateDelay = updateDelay_;
        _cachedChainId = block.chainid;
        _cachedDomainSeparator = _buildDomainSeparator();
        emit OwnershipTransferred(address(0), msg.sender);
    }

    /// @dev Send ETH without copying what the recipient returns: a recipient that refuses with a
    ///      large revert payload would otherwise make the copy cost more than the gas left (the
    ///      1/64 kept back), and a payee that refuses ETH could then never be replaced.
    function _sendValue(address to, uint256 amount) private returns (bool ok) {
        assembly ("memory-safe") {
            ok := call(gas(), to, amount, 0, 0, 0, 0)
        }
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    // ---------------------------------------------------------------- owner

    /// @notice Step one of two: name the next owner. Ownership moves only when it accepts, so a
    ///         mistyped address cannot take (or lose) the oracle. Naming another replaces it.
    function transferOwnership(address newOwner) external onlyOwner {
        if (newOwner == address(0)) revert ZeroAddress();
        pendingOwner = newOwner;
        emit OwnershipTransferStarted(owner, newOwner);
    }

    /// @notice Step two: the pending owner takes ownership.
    function acceptOwnership() external {
        if (msg.sender != pendingOwner) revert NotPendingOwner(msg.sender);
        emit OwnershipTransferred(owner, msg.sender);
        owner = msg.sender;
        pendingOwner = address(0);
    }

    /// @notice Register a model. Its id, input length, scale, instance count and input bound
    ///         never change afterwards (a verifier update must keep the circuit's shape).
    /// @param modelId    the model's id (verinfer uses the sha256 of the ONNX file)
    /// @param verifier   its EZKL Halo2Verifier (may be zero for SignatureOnly)
    /// @param inputLength number of inputs = the circuit's public inputs, before its outputs
    /// @param inputScale fixed-point scale of the inputs
    /// @param policy     ProofOnly, SignatureOnly or ProofOrSignature
    /// @param signer     authorised EIP-712 signer (may be zero for ProofOnly)
    /// @param numInstances the circuit's public instances (inputs, outputs, label)
    /// @param maxAbsInput  largest |input| the circuit represents (its range checks)
    /// @param minFee     least fee (wei) a request must bring
    function registerModel(
        bytes32 modelId,
        address verifier,
        uint32 inputLength,
        uint8 inputScale,
        Policy policy,
        address signer,
        uint32 numInstances,
        uint128 maxAbsInput,
        uint96 minFee
    ) external onlyOwner {
        if (models[modelId].policy != Policy.Unregistered) revert ModelAlreadyRegistered(modelId);
        if (inputLength == 0) revert InvalidInputLength();
        if (numInstances < uint256(inputLength) + 1) {
            revert InvalidInstanceCount(numInstances, uint256(inputLength) + 1);
        }
        if (maxAbsInput == 0) revert InvalidInputBound();
        _checkPaths(verifier, policy, signer);
        models[modelId] = Model(
            signer, inputLength, inputScale, policy, verifier, numInstances, minFee, maxAbsInput, msg.sender, 0
        );
        emit ModelRegistered(
            modelId, verifier, inputLength, inputScale, policy, signer, numInstances, maxAbsInput, minFee
        );
    }

    /// @notice Change a model's minimum fee; applies to requests made afterwards.
    function setMinFee(bytes32 modelId, uint96 minFee) external onlyOwner {
        Model storage m = models[modelId];
        if (m.policy == Policy.Unregistered) revert UnknownModel(modelId);
        m.minFee = minFee;
        emit MinFeeSet(modelId, minFee);
    }

    /// @notice Set who is paid the fees of the model's fulfilments (registration makes it the
    ///         owner). Fees never go to msg.sender, so a fulfilment copied from the mempool and
    ///         sent first by another account earns that account nothing. Fees accrue from
    ///         fulfilments from now on, open requests included. What accrued so far is paid to
    ///         the old payee first; if it refuses ETH, it stays accrued and goes to the new
    ///         payee (so a payee that cannot take ETH can always be replaced).
    function setPayee(bytes32 modelId, address payee) external onlyOwner {
        Model storage m = models[modelId];
        if (m.policy == Policy.Unregistered) revert UnknownModel(modelId);
        if (payee == address(0)) revert ZeroAddress();
        (address old, uint256 amount) = (m.payee, m.accruedFees);
        m.payee = payee;
        emit PayeeSet(modelId, payee);
        if (amount > 0) {
            m.accruedFees = 0;
            bool ok = _sendValue(old, amount);
            if (ok) emit FeesWithdrawn(modelId, old, amount);
            else m.accruedFees += uint96(amount); // refused: kept, for the new payee
        }
    }

    /// @notice Pay the model's accrued fees to its payee. Anyone may call it; the fees go to the
    ///         payee whoever calls. The accrual is zeroed before the transfer.
    function withdrawFees(bytes32 modelId) external {
        Model storage m = models[modelId];
        if (m.policy == Policy.Unregistered) revert UnknownModel(modelId);
        (address payee, uint256 amount) = (m.payee, m.accruedFees);
        if (amount == 0) revert NoFeesAccrued(modelId);
        m.accruedFees = 0;
        emit FeesWithdrawn(modelId, payee, amount);
        if (!_sendValue(payee, amount)) revert FeeTransferFailed(payee);
    }

    /// @notice Announce a change of a model's verifier, policy or signer (e.g. key rotation). It
    ///         takes effect when applied, `updateDelay` seconds from now at the earliest, and only
    ///         for requests made after that: open requests keep the verifier, signer and policy
    ///         they were made under. Announcing again replaces a pending update (and restarts
    ///         the delay).
    function updateModel(bytes32 modelId, address verifier, Policy policy, address signer)
        external
        onlyOwner
    {
        if (models[modelId].policy == Policy.Unregistered) revert UnknownModel(modelId);
        _checkPaths(verifier, policy, signer);
        uint256 effectiveAt = block.timestamp + updateDelay;
        pendingUpdates[modelId] = ModelUpdate(verifier, policy, uint40(effectiveAt), signer);
        emit ModelUpdateScheduled(modelId, verifier, policy, signer, effectiveAt);
    }

    /// @notice Withdraw a pending update.
    function cancelModelUpdate(bytes32 modelId) external onlyOwner {
        if (pendingUpdates[modelId].effectiveAt == 0) revert NoPendingUpdate(modelId);
        delete pendingUpdates[modelId];
        emit ModelUpdateCancelled(modelId);
    }

    /// @notice Apply a model's pending update once its delay has passed. Anyone may call it.
    function applyModelUpdate(bytes32 modelId) external {
        ModelUpdate memory u = pendingUpdates[modelId];
        if (u.effectiveAt == 0) revert NoPendingUpdate(modelId);
        if (block.timestamp < u.effectiveAt) revert UpdateNotReady(u.effectiveAt);
        delete pendingUpdates[modelId];
        Model storage m = models[modelId];
        (m.verifier, m.policy, m.signer) = (u.verifier, u.policy, u.signer);
        emit ModelUpdated(modelId, u.verifier, u.policy, u.signer);
    }

    // ------------------------------------------------------------- requests

    /// @notice Ask for a classification of `input` by `modelId`. Any ETH sent is the fee, held in
    ///         escrow until the request is fulfilled (then it accrues to the model's payee) or
    ///         cancelled after the timeout (then it is refunded).
    /// @param input fixed-point integers at the model's input scale, row-major
    /// @param callbackGasLimit gas for `onClassification` on msg.sender (at most
    ///        MAX_CALLBACK_GAS_LIMIT)
    /// @return requestId the id carried by the event, the fulfilment and the callback
    function requestClassification(bytes32 modelId, int256[] calldata input, uint32 callbackGasLimit)
        external
        payable
        returns (bytes32 requestId)
    {
        Model storage m = models[modelId];
        if (m.policy == Policy.Unregistered) revert UnknownModel(modelId);
        if (input.length != m.inputLength) revert InputLengthMismatch(m.inputLength, input.length);
        if (callbackGasLimit > MAX_CALLBACK_GAS_LIMIT) {
            revert CallbackGasLimitTooHigh(callbackGasLimit, MAX_CALLBACK_GAS_LIMIT);
        }
        if (msg.value < m.minFee) revert FeeTooLow(msg.value, m.minFee);
        int256 bound = int256(uint256(m.maxAbsInput));
        for (uint256 i; i < input.length; ++i) {
            int256 x = input[i];
            if (x > bound || x < -bound) revert InputOutOfRange(i, x);
        }
        bytes32 commitment = keccak256(abi.encode(input));
        requestId = keccak256(abi.encode(block.chainid, address(this), ++requestCount));
        requests[requestId] = Request({
            requester: msg.sender,
            createdAt: uint40(block.timestamp),
            callbackGasLimit: callbackGasLimit,
            status: Status.Open,
            modelId: modelId,
            inputCommitment: commitment,
            fee: uint96(msg.value), // 2^96 wei is ~8e10 ether: more than exists
            verifier: m.verifier,
            signer: m.signer,
            policy: m.policy
        });
        emit ClassificationRequested(
            requestId, modelId, msg.sender, input, commitment, msg.value, callbackGasLimit
        );
    }

    /// @notice Answer a request with a zk proof. Permissionless: the proof is the authority.
    /// @param proof the EZKL proof bytes (as passed to the verifier's verifyProof)
    /// @param instances the proof's public instances: the input (as BN254 field elements,
    ///        negatives as r - |x|), then the outputs, the label last
    function fulfillWithProof(bytes32 requestId, bytes calldata proof, uint256[] calldata instances)
        external
    {
        Request storage r = requests[requestId];
        _requireOpen(r, requestId);
        bytes32 modelId = r.modelId;
        if (r.policy == Policy.SignatureOnly) revert ProofPathDisabled(modelId);
        Model storage m = models[modelId];
        uint256 label =
            _checkProof(r.verifier, m.inputLength, m.numInstances, r.inputCommitment, proof, instances, requestId);
        _fulfil(r, requestId, modelId, label, true);
    }

    /// @notice Answer a request with the label signed (EIP-712 `Classification`) by the model's
    ///         authorised signer. Allowed where the model's policy has a signature path.
    /// @param deadline the signed deadline (unix seconds); refused once block.timestamp > deadline
    /// @param signature 65 bytes r || s || v, v in {27, 28}, low s
    function fulfillWithSignature(
        bytes32 requestId,
        uint256 label,
        uint256 deadline,
        bytes calldata signature
    ) external {
        Request storage r = requests[requestId];
        _requireOpen(r, requestId);
        bytes32 modelId = r.modelId;
        if (r.policy == Policy.ProofOnly) revert SignaturePathDisabled(modelId);
        if (block.timestamp > deadline) revert SignatureExpired(deadline, block.timestamp);
        if (label > MAX_LABEL) revert LabelOutOfRange(label);

        bytes32 digest = classificationDigest(modelId, r.inputCommitment, label, requestId, deadline);
        address recovered = _recover(digest, signature);
        if (recovered != r.signer) revert WrongSigner(recovered, r.signer);
        _fulfil(r, requestId, modelId, label, false);
    }

    /// @notice Cancel an unanswered request after `requestTimeout` and get the fee back.
    ///         Only the requester may cancel.
    function cancelRequest(bytes32 requestId) external {
        Request storage r = requests[requestId];
        _requireOpen(r, requestId);
        if (msg.sender != r.requester) revert NotRequester(msg.sender, r.requester);
        uint256 cancellableAt = uint256(r.createdAt) + requestTimeout;
        if (block.timestamp < cancellableAt) revert CancelTooEarly(cancellableAt);
        r.status = Status.Cancelled;
        uint256 refund = r.fee;
        emit RequestCancelled(requestId, refund);
        if (refund > 0) {
            if (!_sendValue(msg.sender, refund)) revert RefundFailed();
        }
    }

    /// @notice ERC-7992-shaped check (draft standard): is `output` proven for the input that
    ///         `inputCommitment` commits to, under the model's current verifier? Reverts on any
    ///         failure (custom errors above); on success emits InferenceVerified and returns true.
    ///         No request, no fee, no callback.
    /// @param inputCommitment keccak256(abi.encode(int256[] input)), as requests use
    /// @param output abi.encode(uint256 label)
    /// @param proof abi.encode(bytes proofBytes, uint256[] instances): EZKL's proof and its
    ///        public instances (input first, label last), as for fulfillWithProof
    function verifyInference(bytes32 modelId, bytes32 inputCommitment, bytes calldata output, bytes calldata proof)
        external
        returns (bool)
    {
        Model storage m = models[modelId];
        if (m.policy == Policy.Unregistered) revert UnknownModel(modelId);
        if (m.policy == Policy.SignatureOnly) revert ProofPathDisabled(modelId);
        if (output.length != 32) revert MalformedInference();
        (bytes memory proofBytes, uint256[] memory instances) = abi.decode(proof, (bytes, uint256[]));
        uint256 label =
            _checkProof(m.verifier, m.inputLength, m.numInstances, inputCommitment, proofBytes, instances, bytes32(0));
        if (label != abi.decode(output, (uint256))) revert OutputMismatch();
        emit InferenceVerified(modelId, inputCommitment, keccak256(output), msg.sender);
        return true;
    }

    // ---------------------------------------------------------------- views

    /// @notice The input commitment: keccak256(abi.encode(int256[] input)).
    function inputCommitmentOf(int256[] calldata input) external pure returns (bytes32) {
        return keccak256(abi.encode(input));
    }

    function domainSeparator() public view returns (bytes32) {
        return block.chainid == _cachedChainId ? _cachedDomainSeparator : _buildDomainSeparator();
    }

    /// @notice The EIP-712 digest a signer signs for this answer.
    function classificationDigest(
        bytes32 modelId,
        bytes32 inputCommitment,
        uint256 label,
        bytes32 requestId,
        uint256 deadline
    ) public view returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(CLASSIFICATION_TYPEHASH, modelId, inputCommitment, label, requestId, deadline)
        );
        return keccak256(abi.encodePacked(hex"1901", domainSeparator(), structHash));
    }

    /// @notice EIP-5267: the EIP-712 domain, so wallets and libraries can build it.
    function eip712Domain()
        external
        view
        returns (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        )
    {
        return (hex"0f", "verinfer", "1", block.chainid, address(this), bytes32(0), new uint256[](0));
    }

    // ------------------------------------------------------------- internal

    function _checkPaths(address verifier, Policy policy, address signer) private view {
        if (policy == Policy.Unregistered) revert InvalidPolicy();
        if (policy != Policy.SignatureOnly && verifier.code.length == 0) {
            revert VerifierHasNoCode(verifier);
        }
        if (policy != Policy.ProofOnly && signer == address(0)) revert ZeroSigner();
    }

    function _requireOpen(Request storage r, bytes32 requestId) private view {
        Status s = r.status;
        if (s == Status.Open) return;
        if (s == Status.None) revert UnknownRequest(requestId);
        if (s == Status.Fulfilled) revert AlreadyFulfilled(requestId);
        revert RequestIsCancelled(requestId);
    }

    /// @dev The checks of a proof answer: instance count (numInstances >= n + 1), input commitment, label range, then
    ///      the verifier. Returns the label (the last instance).
    function _checkProof(
        address verifier,
        uint256 n,
        uint256 numInstances,
        bytes32 commitment,
        bytes memory proof,
        uint256[] memory instances,
        bytes32 requestId
    ) private returns (uint256 label) {
        if (instances.length != numInstances) revert InstanceCountMismatch(numInstances, instances.length);
        if (_commitInstances(instances, n) != commitment) revert InputMismatch(requestId);
        label = instances[instances.length - 1];
        if (label > MAX_LABEL) revert LabelOutOfRange(label);
        uint256 gasBefore = gasleft();
        try IHalo2Verifier(verifier).verifyProof(proof, instances) returns (bool ok) {
            if (!ok) revert ProofRejected(requestId);
        } catch {
            // EIP-150: the verifier got 63/64 of the gas; if it used (nearly) all of it, it ran
            // out of gas: the transaction's gas limit, not the proof, is at fault
            if (gasleft() <= gasBefore / 63) revert VerifierOutOfGas(requestId);
            revert ProofRejected(requestId);
        }
    }

    /// @dev keccak256(abi.encode(int256[])) of the first n instances read as signed integers
    ///      (a field element above r/2 is negative). One-to-one on requested inputs, which are
    ///      bounded by MAX_ABS_INPUT.
    function _commitInstances(uint256[] memory instances, uint256 n) private pure returns (bytes32) {
        int256[] memory q = new int256[](n);
        for (uint256 i; i < n; ++i) {
            uint256 f = instances[i];
            if (f >= BN254_R) revert InstanceNotInField(i);
            q[i] = f > HALF_R ? int256(f) - int256(BN254_R) : int256(f);
        }
        return keccak256(abi.encode(q));
    }

    function _fulfil(Request storage r, bytes32 requestId, bytes32 modelId, uint256 label, bool byProof)
        private
    {
        r.status = Status.Fulfilled;
        emit ClassificationFulfilled(requestId, modelId, msg.sender, label, byProof);

        bytes memory data =
            abi.encodeCall(IClassificationConsumer.onClassification, (requestId, modelId, label));
        if (!_callWithExactGas(r.requester, r.callbackGasLimit, data)) emit CallbackFailed(requestId);

        // pull payment: the fee accrues to the model (its payee's slot); withdrawFees pays it.
        // No transfer here, so a payee that refuses ETH cannot block fulfilments. The sum cannot
        // overflow uint96: it is wei this contract holds (2^96 wei is more ether than exists).
        uint96 fee = r.fee;
        if (fee > 0) models[modelId].accruedFees += fee;
    }

    /// @dev Calls `target` with exactly `gasAmount` gas, or reverts if that much cannot be
    ///      given (EIP-150 keeps 1/64 back). Return data is never copied (no return bomb).
    ///      A target without code counts as success: there is nothing to call back.
    function _callWithExactGas(address target, uint256 gasAmount, bytes memory data)
        private
        returns (bool success)
    {
        if (target.code.length == 0) return true;
        uint256 g = gasleft();
        if (g < GAS_FOR_CALL_EXACT_CHECK) revert InsufficientGasForCallback(gasAmount);
        g -= GAS_FOR_CALL_EXACT_CHECK;
        if (g - g / 64 <= gasAmount) revert InsufficientGasForCallback(gasAmount);
        assembly ("memory-safe") {
            success := call(gasAmount, target, 0, add(data, 0x20), mload(data), 0, 0)
        }
    }

    function _recover(bytes32 digest, bytes calldata signature) private pure returns (address signer) {
        if (signature.length != 65) revert InvalidSignature();
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly ("memory-safe") {
            r := calldataload(signature.offset)
            s := calldataload(add(signature.offset, 0x20))
            v := byte(0, calldataload(add(signature.offset, 0x40)))
        }
        if (uint256(s) > SECP256K1N_HALF || (v != 27 && v != 28)) revert InvalidSignature();
        signer = ecrecover(digest, v, r, s);
        if (signer == address(0)) revert InvalidSignature();
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }
}
