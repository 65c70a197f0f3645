"""The prover workers' log (``<home>/logs/prove-workers.log``) through a real server process and
real workers: rotated by size, no line lost or torn while two workers write across rotations."""

from __future__ import annotations

import re
import time

import pytest
from jobs_support import tensor

pytestmark = [pytest.mark.e2e, pytest.mark.ezkl]

MAX_BYTES, JOBS = 2048, 100


def test_the_workers_log_rotates_by_size_and_keeps_every_line(new_home, servers):
    """Each input is beyond the circuit's range checks: its job fails at the witness, and its
    worker logs one line naming it (~300 bytes), so 100 jobs on two workers write ~15 files' worth
    at 2 KiB a file. Every job's line is in exactly one file, whole; no file passes the size."""
    home = new_home()
    s = servers(home, {"VERINFER_PROOF_WORKERS": "2", "VERINFER_MAX_QUEUED_PROOFS": str(2 * JOBS),
                       "VERINFER_PROVER_LOG_MAX_BYTES": str(MAX_BYTES),
                       "VERINFER_PROVER_LOG_BACKUPS": "50"})
    ids = []
    for i in range(JOBS):
        body = {"inputs": tensor([1e10 + i * 1e8, 2.8, 4.7, 1.2]), "parameters": {"proof": "async"}}
        status, resp, _ = s.request("POST", "/v2/models/iris_mlp/infer", body)
        assert status == 200, resp
        ids.append(resp["parameters"]["proof_job_id"])
    logs = home / "logs"

    def lines() -> list[str]:
        out = []
        for f in sorted(logs.glob("prove-workers.log*")):
            assert f.stat().st_size <= MAX_BYTES, (f.name, f.stat().st_size)
            out += f.read_text().splitlines()
        return out

    end = time.monotonic() + 300
    for job_id in ids:  # each job ends failed; its worker writes its line just after
        while time.monotonic() < end and s.request("GET", f"/v1/proofs/{job_id}")[1]["status"] != "failed":
            time.sleep(0.2)
    while time.monotonic() < end and not all(any(i in ln for ln in lines()) for i in ids):
        time.sleep(0.2)
    s.stop()  # the workers end; what their pipes held is written before the server exits
    got = lines()
    files = sorted(p.name for p in logs.glob("prove-workers.log*"))
    assert "prove-workers.log.1" in files and len(files) >= 4, files
    for job_id in ids:
        mine = [ln for ln in got if f"job {job_id} attempt 1: " in ln]
        assert len(mine) == 1, (job_id, mine)
        assert mine[0].endswith("was calibrated for)"), mine  # whole, not torn by a rotation
    # no record begins in the middle of a line (two workers' lines interleaved, or one torn)
    record = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} worker ")
    torn = [ln for ln in got if any(m.start() > 0 for m in record.finditer(ln))]
    assert not torn, torn
