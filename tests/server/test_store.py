"""The receipt store's WAL stays bounded under sustained writes (ReceiptStore docs)."""

from __future__ import annotations

import os

from server.receipts.signer import new_request_id
from server.receipts.store import ReceiptStore

BODY = "r" * 2600  # about a receipt's size
INPUT = b"x" * 256


def _write(store: ReceiptStore, chunks: int, *, checkpoint: bool) -> None:
    for _ in range(chunks):
        ids = [new_request_id() for _ in range(8)]
        store.put_many([(i, "m", 1.0, BODY) for i in ids], [(i, "FP32", "[1,1,8,8]", INPUT) for i in ids])
        if checkpoint and store.checkpoint_due:  # as the receipt worker does after a reply
            store.checkpoint()


CHUNKS = 768  # 6,144 receipts, ~35 MB of WAL without checkpoints


def test_writer_checkpoints_keep_the_wal_bounded_and_small(tmp_path):
    """The WAL restarts at every checkpoint, so its file is as large as the most written
    between two: store.CHECKPOINT_EVERY receipts, ~1.2 MB. Each checkpoint copies that much back
    while the answers behind it wait (12-14 ms for the 4.6 MB of 512 receipts, ~4 ms now)."""
    store = ReceiptStore(tmp_path / "r.db")
    reader = ReceiptStore(tmp_path / "r.db")  # another connection, as the event loop's
    _write(store, CHUNKS, checkpoint=True)
    assert store.count() == 8 * CHUNKS
    wal = os.path.getsize(tmp_path / "r.db-wal")
    assert wal < 2 << 20, f"WAL is {wal / 1e6:.1f} MB"
    some = new_request_id()
    store.put_many([(some, "m", 1.0, BODY)])
    assert reader.get(some) == BODY
    store.close()
    reader.close()


def test_without_checkpoints_the_wal_grows(tmp_path):
    """The bound above comes from the checkpoints (the control for the test above)."""
    store = ReceiptStore(tmp_path / "r.db")
    _write(store, CHUNKS, checkpoint=False)
    assert os.path.getsize(tmp_path / "r.db-wal") > 24 << 20
    store.close()


def test_request_ids_are_unique_and_ordered_by_time():
    import re

    from server.receipts.signer import new_request_ids

    ids = [new_request_id() for _ in range(1000)] + [i for _ in range(125) for i in new_request_ids(8)]
    assert all(re.fullmatch(r"0x[0-9a-f]{64}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert [i[:18] for i in ids] == sorted(i[:18] for i in ids)  # the 8-byte time prefix
