"""Audit throughput of v2 receipts (receipt log) on one core.

    python -m bench.audit_v2 [--receipts 20000] [--batch 64] [--repeat 3]

Builds a real receipt log (the server's writer, :mod:`server.receipts.translog`) of
``--receipts`` digits_cnn-shaped answers in batches of ``--batch`` (one checkpoint each), then
times, in this one process:

- ``audit``: :class:`verifier.audit.Auditor` over the receipts as JSON lines (parse, checkpoint
  signature once per checkpoint, inclusion proof, statement parse, subject and output digests),
  what ``verinfer audit --jobs 1`` does per item;
- ``audit + log``: the same plus the append-only check against the log folder (``--log DIR``);
- ``inclusion only``: the Merkle part alone (base64, leaf hash, the proof's path);
- ``inclusion, proven nodes``: the same with :class:`verifier.tlog.ProvenNodes` (what the audit
  uses: each proof hashed only up to a node an earlier proof of its checkpoint proved);
- ``v1 audit``: the same answers as v1 receipts (DSSE Ed25519 + EIP-712 per answer, the server's
  v1 signer), the per-answer-signature format v2 replaces, measured in the same run.

Prints receipts/s (target: >= 20,000 on one core) and writes ``bench/results/audit_v2.json``.
Pinned to one CPU (``--cpu``, default the last). Best of --repeat runs. No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def build(work: Path, n: int, batch: int) -> tuple[list[str], dict]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from server.receipts.translog import LogWriter
    from verifier.fixedpoint import input_commitments
    from verifier.keys import ed25519_jwk
    from verifier.receipts import InputRef, ModelRef, OutputTensor, make_subjects
    from verifier.receipts_v2 import PredicateV2, ReceiptV2, StatementV2
    from verifier.tensors import tensor_digest
    from verifier.tlog import leaf_hash, signature_line

    key = Ed25519PrivateKey.generate()
    writer = LogWriter(work / "log.sqlite3", "bench.verinfer/log", lambda o, b: signature_line(o, key, b))
    rng = np.random.default_rng(0)
    model = ModelRef(name="digits_cnn", version="1", sha256="cd" * 32)
    lines = []
    for start in range(0, n, batch):
        stmts = []
        for _ in range(min(batch, n - start)):
            x = rng.random((1, 1, 8, 8), dtype=np.float32)
            logits = rng.standard_normal((1, 10)).astype(np.float32)
            label = np.asarray([int(logits.argmax())], dtype=np.int64)
            inp = InputRef(name="input", datatype="FP32", shape=x.shape, digest=tensor_digest(x, "FP32"), scale=13,
                           commitment="0x" + input_commitments(x, 13, [1])[0].hex())
            outs = (OutputTensor(name="logits", datatype="FP32", shape=(1, 10), digest=tensor_digest(logits, "FP32"),
                                 data=[float(v) for v in logits.ravel()]),
                    OutputTensor(name="label", datatype="INT64", shape=(1,), digest=tensor_digest(label, "INT64"),
                                 data=label.tolist()))
            pred = PredicateV2(requestId="0x" + os.urandom(32).hex(), model=model, input=inp, outputs=outs,
                               label=int(label[0]), time="2026-11-30T21:00:00.000Z", device="cpu")
            stmts.append(StatementV2(subject=make_subjects(model, inp, outs), predicate=pred))
        data = [s.canonical_bytes() for s in stmts]
        first = writer.size
        note, proof = writer.append([leaf_hash(d) for d in data])
        for j, (st, d) in enumerate(zip(stmts, data)):
            lines.append(ReceiptV2(id=st.predicate.requestId, statement=base64.b64encode(d).decode(), index=first + j,
                                   proof=[base64.b64encode(h).decode() for h in proof(first + j)],
                                   checkpoint=note).model_dump_json())
    writer.close()
    return lines, {"keys": [ed25519_jwk(key.public_key())]}


def build_v1(n: int) -> tuple[list[str], dict]:
    """``n`` v1 receipts of digits_cnn-shaped answers from the server's v1 signer."""
    from server.receipts.keys import load_keys
    from server.receipts.signer import BatchJob, ModelInfo, ReceiptSigner
    from server.settings import ServerSettings

    settings = ServerSettings(home=Path(tempfile.mkdtemp()))
    keys = load_keys(settings)
    signer = ReceiptSigner(keys, settings)
    info = ModelInfo("digits_cnn", "1", "cd" * 32, "input", "FP32", 13, (("logits", "FP32"), ("label", "INT64")), "cpu")
    rng, lines = np.random.default_rng(1), []
    while len(lines) < n:
        k = min(64, n - len(lines))
        x = rng.random((k, 1, 8, 8), dtype=np.float32)
        logits = rng.standard_normal((k, 10)).astype(np.float32)
        label = logits.argmax(1).astype(np.int64)
        job = BatchJob("digits_cnn", None, [None] * k, [None] * k, ["FP32"] * k, [None] * k, x,
                       {"logits": logits, "label": label}, [1] * k, [int(v) for v in label])
        lines.extend(signer.sign_batch(info, job))
    return lines, keys.jwks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--receipts", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=64, help="receipts per checkpoint")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cpu", type=int, default=None, help="the one CPU to run on (default: the last)")
    args = ap.parse_args(argv)
    cpu = None
    if hasattr(os, "sched_setaffinity"):  # "on one core": pinned, so that nothing runs on a second
        cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})

    from verifier.audit import Auditor, Item, check_log
    from verifier.logcheck import open_log
    from verifier.receipts_v2 import ReceiptV2
    from verifier.tlog import leaf_hash, parse_checkpoint, verify_inclusion

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lines, jwks = build(work, args.receipts, args.batch)
        items = [Item(f"r:{i}", "receipt", line) for i, line in enumerate(lines)]

        def audit():
            a = Auditor(jwks=jwks)
            results = [a.check(i) for i in items]
            assert all(r.outcome == "ok" for r in results), next(r for r in results if r.outcome != "ok")
            return a, results

        def audit_log():
            a, results = audit()
            assert all(r.outcome == "ok" for r in check_log(results, a, [open_log(str(work))]))

        parsed = [ReceiptV2.model_validate_json(line) for line in lines]
        v1_lines, v1_jwks = build_v1(len(lines))
        v1_items = [Item(f"v1:{i}", "receipt", line) for i, line in enumerate(v1_lines)]

        def audit_v1():
            a = Auditor(jwks=v1_jwks)
            assert all(a.check(i).outcome == "ok" for i in v1_items)

        def inclusion():
            cps: dict = {}
            for r in parsed:
                cp = cps.get(r.checkpoint) or cps.setdefault(r.checkpoint, parse_checkpoint(r.checkpoint)[0])
                verify_inclusion(r.index, cp.size, leaf_hash(base64.b64decode(r.statement)),
                                 [base64.b64decode(p) for p in r.proof], cp.root)

        def inclusion_proven():
            from verifier.tlog import ProvenNodes

            cps: dict = {}
            for r in parsed:
                cp = cps.get(r.checkpoint)
                if cp is None:
                    head = parse_checkpoint(r.checkpoint)[0]
                    cp = cps[r.checkpoint] = ProvenNodes(head.size, head.root)
                cp.verify(r.index, leaf_hash(base64.b64decode(r.statement)), r.proof)

        timings = {}
        for name, fn in (("audit", audit), ("audit + log", audit_log), ("inclusion only", inclusion),
                         ("inclusion, proven nodes", inclusion_proven), ("v1 audit", audit_v1)):
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
            timings[name] = {"seconds": round(best, 4), "receipts_per_s": round(len(items) / best)}
            print(f"{name:24s} {len(items)} receipts in {best:.3f} s: {len(items) / best:10,.0f} receipts/s")
    ratio = round(timings["v1 audit"]["seconds"] / timings["audit"]["seconds"], 2)
    print(f"v2 audit / v1 audit throughput: x{ratio}")
    out = {"benchmark": "audit_v2", "v2_vs_v1_throughput": ratio, "receipts": len(items), "batch": args.batch, "cpus": os.cpu_count(), "pinned_to_cpu": cpu,
           "python": platform.python_version(), "results": timings, "target": ">= 20000 receipts/s on one core",
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "audit_v2.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS / 'audit_v2.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
