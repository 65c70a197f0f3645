"""Proof jobs with ``verinfer serve --workers 2`` (server/supervisor.py): process 0 runs the
prover workers and proves what either process queued; a ``proof: "sync"`` request answered by
process 1 is woken when the job ends."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from jobs_support import iris_input, package_dir, tensor

from testkit.server_process import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.ezkl]


def test_either_process_queues_proofs_that_process_0_proves(new_home):
    from verifier.bundle import ProofBundle
    from verifier.proofs import verify_signed_bundle

    # without the wake-up in process 1 its sync requests would wait out this timeout (and
    # then answer "done"): the clients give up long before it (a hang guard, not a timing)
    s = ServerProcess(new_home(), "--workers", "2", env={"VERINFER_SYNC_PROOF_TIMEOUT_S": "900"}).wait_ready()
    try:
        end = time.monotonic() + 120
        while "with 2 server processes" not in s.output():
            assert time.monotonic() < end and s.proc.poll() is None, s.output()
            time.sleep(0.1)

        def sync(i: int):
            body = {"inputs": tensor(iris_input(i)), "parameters": {"proof": "sync"}}
            return s.request("POST", "/v2/models/iris_mlp/infer", body, timeout=240)

        answers: dict[str, list[dict]] = {}
        for batch in range(3):  # until both processes answered some
            with ThreadPoolExecutor(8) as pool:
                for status, resp, headers in pool.map(sync, range(batch * 8, batch * 8 + 8)):
                    assert status == 200, resp
                    answers.setdefault(headers["Verinfer-Worker"].split(".")[0], []).append(resp)
            if len(answers) == 2:
                break
        assert set(answers) == {"0", "1"}, list(answers)
        jwks = s.get("/.well-known/jwks.json")
        for resp in answers["0"] + answers["1"]:
            p = resp["parameters"]
            assert p["proof_status"] == "done" and p["proof_outcome"] == "proven", p
            bundle = ProofBundle.model_validate_json(p["proof_bundle"])
            verify_signed_bundle(bundle, package_dir(s.home), jwks, allow_dev_srs=True)
        # the prover workers run in process 0; either process reports them
        seen: dict[str, list[int]] = {}
        for _ in range(60):
            status, queue, headers = s.request("GET", "/v1/proofs")
            assert status == 200, queue
            seen[headers["Verinfer-Worker"].split(".")[0]] = queue["worker_pids"]
            if len(seen) == 2:
                break
        assert set(seen) == {"0", "1"}, seen
        assert seen["0"] == seen["1"] and seen["0"], seen
        for pid in seen["0"]:
            os.kill(pid, 0)  # alive
    finally:
        s.stop()
