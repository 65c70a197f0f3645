"""The receipt writer's CPU per answer, by stage, for groups of 8 and of 32 answers (no HTTP).

``bench/loop_cost.py`` measures the event loop's side of a receipt; this measures the other
side: what the receipt worker process spends on each answer (``make_receipts``: statements,
log append and checkpoint, proofs and receipt texts, the responses, the store commit) and on
the pickled job and reply around it. It runs the worker's own code in this process on
digits_cnn answers the real model computed, with the server's keys, log and store in a
temporary data dir. A group is what the writer does per checkpoint: at c=16 a group is one
chunk of 8 answers (two groups of clients take turns, docs/performance.md), under heavier load
up to ``GROUP_ANSWERS`` (32). Sizes run in turns, ``--rounds`` rounds; medians with their range.

    python -m bench.worker_cost [--rounds 4] [--groups 300]
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.loop_cost import StageClock, med, write_result

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "digits_cnn"
CHUNK = 8  # answers per job: the batcher's finish_chunk
# nested: commitments, digests and numbers_json are in statements; log_append (and in it
# checkpoint, and in that signature) in log_batch
STAGES = ("statements", "commitments", "digests", "numbers_json", "log_append", "checkpoint", "signature",
          "log_batch", "responses", "store", "pickle")


class Writer:
    """The worker's state and one group's work, with its stages clocked."""

    def __init__(self) -> None:
        from server.inference.registry import load_models
        from server.inference.service import model_info
        from server.receipts import logged, worker
        from server.receipts.keys import load_keys
        from server.receipts.logged import LogReceipts
        from server.receipts.store import ReceiptStore
        from server.settings import ServerSettings

        settings = ServerSettings(home=Path(tempfile.mkdtemp(prefix="worker-cost-")), models=(MODEL,))
        served = load_models(settings)[MODEL]
        self.engine = served.engine
        self.infos = {MODEL: model_info(served)}
        self.maker = LogReceipts(load_keys(settings, create=True), settings)
        self.store = ReceiptStore(settings.receipts_path)
        self.make_receipts = worker.make_receipts
        self.clock = clock = StageClock()
        clock.wrap(LogReceipts, "statements", "statements")
        clock.wrap(logged, "input_commitments", "commitments")
        clock.wrap(logged, "tensor_digests", "digests")
        clock.wrap(logged, "jcs_number_rows", "numbers_json")
        clock.wrap(LogReceipts, "log_batch", "log_batch")
        clock.wrap(self.maker.log, "append", "log_append")
        clock.wrap(self.maker.log, "_checkpoint", "checkpoint")
        clock.wrap(self.maker.log, "_sign_line", "signature")
        clock.wrap(worker, "response_body", "responses")
        clock.wrap(worker, "outputs_json", "responses")
        clock.wrap(self.store, "put_many", "store")
        self.rng = np.random.default_rng(0)

    def jobs(self, answers: int):
        """``answers`` one-sample answers of the real model, in jobs of ``CHUNK``."""
        from server.receipts.signer import BatchJob

        out = []
        for start in range(0, answers, CHUNK):
            n = min(CHUNK, answers - start)
            x = self.rng.random((n, 1, 8, 8), dtype=np.float32).round(4)
            outs = self.engine.run(x)
            out.append(BatchJob(MODEL, None, [None] * n, [None] * n, ["FP32"] * n, [None] * n, x, outs,
                                [1] * n, outs["label"].reshape(-1).tolist()))
        return out

    def group(self, answers: int) -> None:
        frames = pickle.dumps([(i, j) for i, j in enumerate(self.jobs(answers))], protocol=pickle.HIGHEST_PROTOCOL)
        start = time.process_time()
        jobs = [job for _, job in pickle.loads(frames)]
        self.clock.cpu["pickle"] += time.process_time() - start
        replies = self.make_receipts(self.maker, self.store, self.infos, jobs, True)
        start = time.process_time()
        pickle.dumps(replies, protocol=pickle.HIGHEST_PROTOCOL)
        self.clock.cpu["pickle"] += time.process_time() - start
        if self.store.checkpoint_due:  # as the worker does after a reply (not clocked)
            self.store.checkpoint()


def measure(writer: Writer, answers: int, groups: int) -> dict:
    """CPU per answer of ``groups`` groups of ``answers``, by stage; ``clocked_us`` is the sum
    of the outer stages (making the jobs, the model's forward pass included, is not counted)."""
    writer.clock.cpu.clear()
    for _ in range(groups):
        writer.group(answers)
    n = groups * answers
    stages = {s: writer.clock.cpu[s] / n * 1e6 for s in STAGES}
    clocked = sum(stages[s] for s in ("statements", "log_batch", "responses", "store", "pickle"))
    return {"answers_per_group": answers, "clocked_us": clocked, "stages_us": stages}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.worker_cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--groups", type=int, default=300, help="groups per size and round")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 32], help="answers per group")
    ap.add_argument("--out", type=Path, default=RESULTS / "worker_cost.json")
    args = ap.parse_args(argv)
    writer = Writer()
    for size in args.sizes:  # warm up
        measure(writer, size, 20)
    runs: dict[int, list[dict]] = {s: [] for s in args.sizes}
    for r in range(args.rounds):
        order = args.sizes if r % 2 == 0 else list(reversed(args.sizes))
        for size in order:
            res = measure(writer, size, args.groups)
            runs[size].append(res)
            parts = ", ".join(f"{s} {v:.0f}" for s, v in res["stages_us"].items())
            print(f"round {r + 1} groups of {size:2d}: {res['clocked_us']:.0f} µs/answer clocked; {parts}", flush=True)

    summary = {str(s): {"clocked_us": med([r["clocked_us"] for r in rs]),
                        "stages_us": {st: med([r["stages_us"][st] for r in rs]) for st in STAGES}}
               for s, rs in runs.items()}
    for s, v in summary.items():
        print(f"groups of {s}: {v['clocked_us']['median']:.0f} µs/answer "
              f"[{v['clocked_us']['min']:.0f}, {v['clocked_us']['max']:.0f}]")
    result = {"model": MODEL, "chunk": CHUNK, "rounds": args.rounds, "groups": args.groups,
              "summary": summary, "runs": {str(s): rs for s, rs in runs.items()}}
    write_result(args.out, result, "bench.worker_cost", argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
