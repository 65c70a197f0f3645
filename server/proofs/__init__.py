"""Proof jobs: the supervisor, the job store, the prover worker process, callbacks."""
