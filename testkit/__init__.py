"""What tests/ and bench/ share: a real ``verinfer serve`` process on a free port
(:mod:`testkit.server_process`) and the tamper corpus generator (:mod:`testkit.corpus`).

Not part of the installed package (``pyproject.toml`` installs verifier, prover, server, contracts,
models); it may import all of them, and only tests/ and bench/ import it, so that bench/ need not
import from tests/ and the trust root (verifier/) carries no test-data generator.
"""
