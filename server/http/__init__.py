"""HTTP: the app factory, the fast infer route, the proofs API, schemas."""
