"""Turn an ONNX model into a circuit package, prove, and check proofs.

The proof system sits behind :class:`prover.backend.ProofSystem`; EZKL is the
one implementation (:mod:`prover.ezkl_backend`).
"""
