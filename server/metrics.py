"""Prometheus metrics of one server (prometheus-client; ``GET /metrics``).

Names follow Prometheus conventions: base units in the name, ``_total`` on counters. Request
and inference figures are counted as they happen, in this process; proof-job figures are read
from the job store when scraped, so they survive restarts and count every worker's jobs.
Each app has its own registry (several apps in one test process do not collide).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class _ProofJobs:
    """Proof-job figures from the job store, at scrape time."""

    def __init__(self, store) -> None:
        self.store = store

    def collect(self):
        depth = GaugeMetricFamily("verinfer_proof_jobs", "Proof jobs by status now", labels=["status"])
        for status in ("queued", "running", "done", "failed"):
            depth.add_metric([status], 0)
        outcomes = CounterMetricFamily("verinfer_proofs", "Proof jobs ended, by model and outcome "
                                       "(proven, mismatch, failed)", labels=["model", "outcome"])
        seconds = CounterMetricFamily("verinfer_prover_seconds", "Wall seconds provers spent on "
                                      "finished jobs, by model (per proof: divide by "
                                      "verinfer_proofs_total)", labels=["model"])
        summary = self.store.metrics_summary()
        for status, n in summary["by_status"].items():
            depth.add_metric([status], n)
        for (model, outcome), n in summary["by_outcome"].items():
            outcomes.add_metric([model, outcome], n)
        for model, s in summary["prover_seconds"].items():
            seconds.add_metric([model], s)
        yield depth
        yield outcomes
        yield seconds


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("verinfer_requests", "Infer requests answered, by model and HTTP "
                                "status", ["model", "status"], registry=r)
        self.request_seconds = Histogram("verinfer_request_duration_seconds", "Infer request time "
                                         "from the body read to the answer (queue, inference and "
                                         "signing)", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram("verinfer_inference_duration_seconds", "One batch's "
                                           "forward pass", ["model"], buckets=LATENCY_BUCKETS,
                                           registry=r)
        self.batch_rows = Histogram("verinfer_batch_rows", "Rows in one batch run by the engine",
                                    ["model"], buckets=ROW_BUCKETS, registry=r)
        self.rows = Counter("verinfer_rows", "Rows (samples) answered, by model", ["model"],
                            registry=r)
        self.compute_seconds = Counter("verinfer_compute_seconds", "Engine seconds spent, by model "
                                       "(per answer: divide by verinfer_rows_total)", ["model"],
                                       registry=r)

    def watch_proofs(self, store) -> None:
        self.registry.register(_ProofJobs(store))

    def batch(self, model: str, rows: int, seconds: float) -> None:
        self.inference_seconds.labels(model).observe(seconds)
        self.batch_rows.labels(model).observe(rows)
        self.rows.labels(model).inc(rows)
        self.compute_seconds.labels(model).inc(seconds)

    def answered(self, model: str, status: int, seconds: float) -> None:
        self.requests.labels(model, str(status)).inc()
        self.request_seconds.labels(model).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
