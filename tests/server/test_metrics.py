"""``GET /metrics``: Prometheus figures that move as requests are served (in process), and
proof-job figures read from the job store."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from server.http.app import create_app
from server.proofs.store import JobStore
from server.settings import ServerSettings

IRIS = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
IRIS3 = {"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2] * 3}]}


def scrape(client) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def client(tmp_path):
    settings = ServerSettings(home=tmp_path, models=("iris_mlp",), proof_workers=0)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        yield c


def test_metrics_move_as_requests_are_served(client):
    before = scrape(client)
    assert value(before, "verinfer_requests_total", model="iris_mlp", status="200") == 0
    assert client.post("/v2/models/iris_mlp/infer", json=IRIS).status_code == 200
    assert client.post("/v2/models/iris_mlp/infer", json=IRIS3).status_code == 200
    assert client.post("/v2/models/iris_mlp/infer", content=b"{nope").status_code == 400
    assert client.post("/v2/models/nothere/infer", json=IRIS).status_code == 404
    after = scrape(client)
    assert value(after, "verinfer_requests_total", model="iris_mlp", status="200") == 2
    assert value(after, "verinfer_requests_total", model="iris_mlp", status="400") == 1
    assert value(after, "verinfer_requests_total", model="(unknown)", status="404") == 1
    assert value(after, "verinfer_request_duration_seconds_count", model="iris_mlp") == 3
    assert value(after, "verinfer_rows_total", model="iris_mlp") == 4
    assert value(after, "verinfer_batch_rows_count", model="iris_mlp") == 2
    assert value(after, "verinfer_batch_rows_sum", model="iris_mlp") == 4
    assert value(after, "verinfer_compute_seconds_total", model="iris_mlp") > 0
    assert value(after, "verinfer_inference_duration_seconds_count", model="iris_mlp") == 2
    # each request's wait for its batch, each chunk's time in the receipt stage
    assert value(after, "verinfer_queue_duration_seconds_count", model="iris_mlp") == 2
    assert value(after, "verinfer_signing_duration_seconds_count", model="iris_mlp") == 2
    assert value(after, "verinfer_signing_duration_seconds_sum", model="iris_mlp") > 0
    # the receipt log: a leaf per answer, a checkpoint per append
    assert value(before, "verinfer_log_size_leaves") == 0
    assert value(after, "verinfer_log_size_leaves") == 2  # one leaf per answer (request), not per row
    assert value(after, "verinfer_log_checkpoints_total") >= value(before, "verinfer_log_checkpoints_total") + 2
    # the proof queue is there, empty
    assert after[("verinfer_proof_jobs", (("status", "queued"),))] == 0


def test_proof_figures_come_from_the_job_store(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    args = dict(model="iris_mlp", package_id="p" * 64, model_sha256="a" * 64, input_json="{}",
                receipt_id=None, callback_url=None, max_active=10)
    for d in "abcd":
        store.submit(input_digest=d * 64, **args)
    done, _ = store.claim("w", lease_s=60)
    for stage in ("witness", "proving", "verifying", "proving"):  # a stage seen twice adds up
        assert store.heartbeat(done.id, "w", 60, stage=stage)
    store.finish(done.id, "proven", "{}")
    mismatch, _ = store.claim("w", lease_s=60)
    store.finish(mismatch.id, "mismatch", "{}")
    failed, _ = store.claim("w", lease_s=60)
    store.fail_now(failed.id, "bad input")
    summary = store.metrics_summary()
    assert summary["by_status"] == {"done": 2, "failed": 1, "queued": 1}
    assert summary["by_outcome"] == {("iris_mlp", "proven"): 1, ("iris_mlp", "mismatch"): 1,
                                     ("iris_mlp", "failed"): 1}
    assert summary["prover_seconds"]["iris_mlp"] >= 0
    stages = summary["stage_seconds"]  # the finished attempts' stages, the job's last one closed at finish
    assert {s for _, s in stages} == {"starting", "witness", "proving", "verifying"}
    assert all(v >= 0 for v in stages.values())
    walls = sum(store.get(j.id).finished - store.get(j.id).started for j in (done, mismatch))
    assert sum(stages.values()) == pytest.approx(walls, abs=1e-3)  # the stages cover each attempt's time
    store.close()
