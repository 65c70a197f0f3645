"""State shared by the server processes of ``serve --workers N`` (:mod:`server.supervisor`).

Small fixed-size files under ``<home>/run``, mapped into each process (``mmap``) and locked
with ``flock`` for each read-modify-write: a few microseconds, no server round trip. The
supervisor makes them anew at each start (:func:`prepare`); the server processes open them.
What lives here: the API keys' rate-limit token buckets (:class:`SharedBuckets`) and the
requests waiting for their proofs (:class:`ProcessCounts`). With one process (the default)
none of this is used: those stay in the process's memory.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import shutil
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

BUCKETS_FILE = "ratelimit-buckets.bin"
WAITERS_FILE = "proof-waiters.bin"
PROMETHEUS_DIR = "prometheus"  # PROMETHEUS_MULTIPROC_DIR of the server processes

BUCKET_SLOTS = 16384  # open addressing; a slot: key hash, tokens, last refill (monotonic clock)
BUCKET = struct.Struct("<Qdd")
PROBE = 32  # slots looked at for a key before reusing the stalest of them
COUNT = struct.Struct("<q")
T = TypeVar("T")


@dataclass(frozen=True)
class Shared:
    """Where a server process of ``serve --workers`` finds the shared state, and which it is."""

    run: Path
    index: int
    processes: int

    def buckets(self) -> SharedBuckets:
        return SharedBuckets(self.run / BUCKETS_FILE)

    def waiters(self) -> ProcessCounts:
        return ProcessCounts(self.run / WAITERS_FILE, self.index, self.processes)


def prepare(run: Path) -> Path:
    """The supervisor, before it starts the server processes: empty shared files, and an empty
    folder for prometheus-client's multi-process files (``PROMETHEUS_MULTIPROC_DIR``); returns it."""
    for name in (BUCKETS_FILE, WAITERS_FILE):
        (run / name).unlink(missing_ok=True)
    prometheus = run / PROMETHEUS_DIR
    shutil.rmtree(prometheus, ignore_errors=True)
    prometheus.mkdir(mode=0o700)
    return prometheus


class _SlotFile:
    """A file of ``size`` bytes mapped into this process; :meth:`locked` holds it for a change."""

    def __init__(self, path: Path, size: int) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, size)  # zeros (sparse); the same size in every process
        self.map = mmap.mmap(self.fd, size)
        self.thread = threading.Lock()  # flock does not exclude threads sharing one descriptor

    @contextmanager
    def locked(self) -> Iterator[mmap.mmap]:
        with self.thread:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                yield self.map
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def _key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") or 1


class SharedBuckets:
    """Token buckets by key id in one file for every process. A key has a slot among the
    ``PROBE`` after its hash's; when all are taken by other keys, the one refilled longest ago
    is reused (its key starts again from a full bucket, which it nearly always has by then)."""

    def __init__(self, path: Path) -> None:
        self.file = _SlotFile(path, BUCKET_SLOTS * BUCKET.size)
        self._hashes: dict[str, int] = {}

    def update(self, key: str, change: Callable[[float | None, float | None], tuple[float, float, T]]) -> T:
        """``change(tokens, last)`` (``None, None`` for a new key) -> the new ``(tokens, last,
        result)``: the bucket is written back, ``result`` returned."""
        h = self._hashes.get(key)
        if h is None:  # keys are authenticated ones: a few
            h = self._hashes[key] = _key_hash(key)
        start, m, fd = h % BUCKET_SLOTS, self.file.map, self.file.fd
        # the lock of _SlotFile.locked, written out: on every authenticated request, and the
        # generator-based context manager costs ~4 us more a call (bench/shared_state.py)
        with self.file.thread:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                found, stalest, stalest_last = None, start, float("inf")
                for i in range(PROBE):
                    offset = ((start + i) % BUCKET_SLOTS) * BUCKET.size
                    slot_hash, tokens, last = BUCKET.unpack_from(m, offset)
                    if slot_hash == h:
                        found = (offset, tokens, last)
                        break
                    if slot_hash == 0:
                        found = (offset, None, None)
                        break
                    if last < stalest_last:
                        stalest, stalest_last = offset, last
                offset, tokens, last = found if found is not None else (stalest, None, None)
                tokens, last, result = change(tokens, last)
                BUCKET.pack_into(m, offset, h, tokens, last)
                return result
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.file.close()


class ProcessCounts:
    """One count per server process (its index), summed for a server-wide bound. A process
    zeroes its own count when it starts: what a dead predecessor held died with it."""

    def __init__(self, path: Path, index: int, processes: int) -> None:
        self.file = _SlotFile(path, processes * COUNT.size)
        self.offset = index * COUNT.size
        self.processes = processes
        with self.file.locked() as m:
            COUNT.pack_into(m, self.offset, 0)

    def total(self) -> int:
        with self.file.locked() as m:
            return self._sum(m)

    def _sum(self, m: mmap.mmap) -> int:
        return sum(COUNT.unpack_from(m, i * COUNT.size)[0] for i in range(self.processes))

    def enter(self, limit: int) -> bool:
        """Count one more for this process if the server-wide total is under ``limit``."""
        with self.file.locked() as m:
            if self._sum(m) >= limit:
                return False
            COUNT.pack_into(m, self.offset, COUNT.unpack_from(m, self.offset)[0] + 1)
            return True

    def leave(self) -> None:
        with self.file.locked() as m:
            COUNT.pack_into(m, self.offset, COUNT.unpack_from(m, self.offset)[0] - 1)

    def close(self) -> None:
        self.file.close()
