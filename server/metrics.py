"""Prometheus metrics of one server (prometheus-client; ``GET /metrics``).

Names follow Prometheus conventions: base units in the name, ``_total`` on counters. Request
and inference figures are counted as they happen; proof-job and log figures are read from the
job store and the log when scraped, so they survive restarts and count every process's work.
Each app has its own registry (several apps in one test process do not collide).

``serve --workers N`` (N > 1): the supervisor gives the server processes an empty
``PROMETHEUS_MULTIPROC_DIR`` (``<home>/run/prometheus``), so prometheus-client keeps each
process's counts in files there; ``/metrics`` of any process adds up every process's files
(:class:`MultiProcessCollector`: counters and histograms summed, the dead processes' included;
``verinfer_server_processes`` summed over live processes only, the supervisor removing a dead
one's with ``mark_process_dead``). The scrape-time figures are read once, not once per process.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
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
        stages = CounterMetricFamily("verinfer_proof_stage_seconds", "Seconds finished proofs spent in "
                                     "each stage (starting, witness, proving, verifying, signing), by model",
                                     labels=["model", "stage"])
        summary = self.store.metrics_summary()
        for (model, stage), s in summary["stage_seconds"].items():
            stages.add_metric([model, stage], s)
        for status, n in summary["by_status"].items():
            depth.add_metric([status], n)
        for (model, outcome), n in summary["by_outcome"].items():
            outcomes.add_metric([model, outcome], n)
        for model, s in summary["prover_seconds"].items():
            seconds.add_metric([model], s)
        yield depth
        yield outcomes
        yield seconds
        yield stages


class _Log:
    """The receipt log's size and checkpoints signed (rate: ``rate(..._total[1m])``), at scrape time."""

    def __init__(self, reader) -> None:
        self.reader = reader

    def collect(self):
        size, count = self.reader.stats()
        g = GaugeMetricFamily("verinfer_log_size_leaves", "Leaves (answers) in the receipt log's latest checkpoint")
        g.add_metric([], size)
        c = CounterMetricFamily("verinfer_log_checkpoints", "Checkpoints the receipt log has signed")
        c.add_metric([], count)
        yield g
        yield c


def multiprocess_dir() -> str | None:
    """prometheus-client's multi-process folder (set by ``serve --workers`` for its processes)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


class Metrics:
    def __init__(self) -> None:
        # the registry scraped: this process's metrics, or (serve --workers) every process's files
        r = self.registry = CollectorRegistry()
        if multiprocess_dir() is not None:
            from prometheus_client.multiprocess import MultiProcessCollector

            MultiProcessCollector(self.registry)
            r = CollectorRegistry()  # the metrics below live in files; not collected again here
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

        self.queue_seconds = Histogram("verinfer_queue_duration_seconds", "Time a request waits for "
                                       "its batch to start", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.signing_seconds = Histogram("verinfer_signing_duration_seconds", "Time a chunk of answers "
                                         "spends in the receipt stage (statements, log append, checkpoint, "
                                         "store)", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.processes = Gauge("verinfer_server_processes", "Server processes serving this port "
                               "(serve --workers)", registry=r, multiprocess_mode="livesum")
        self.processes.set(1)
        self._children: dict[tuple, tuple] = {}  # labelled children, made once (on every answer's path)

    def watch_proofs(self, store) -> None:
        self.registry.register(_ProofJobs(store))

    def watch_log(self, reader) -> None:
        self.registry.register(_Log(reader))

    def _of(self, model: str) -> tuple:
        c = self._children.get(model)
        if c is None:
            c = self._children[model] = (
                self.inference_seconds.labels(model), self.batch_rows.labels(model), self.rows.labels(model),
                self.compute_seconds.labels(model), self.request_seconds.labels(model),
                self.queue_seconds.labels(model), self.signing_seconds.labels(model))
        return c

    def batch(self, model: str, rows: int, seconds: float, waits: list[float] = ()) -> None:
        inference, batch_rows, rows_, compute, _, queue, _ = self._of(model)
        inference.observe(seconds)
        batch_rows.observe(rows)
        rows_.inc(rows)
        compute.inc(seconds)
        for w in waits:
            queue.observe(w)

    def signed(self, model: str, seconds: float) -> None:
        self._of(model)[6].observe(seconds)

    def answered(self, model: str, status: int, seconds: float) -> None:
        key = (model, status)
        counter = self._children.get(key)
        if counter is None:
            counter = self._children[key] = self.requests.labels(model, str(status))
        counter.inc()
        self._of(model)[4].observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
