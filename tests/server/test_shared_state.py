"""The state ``serve --workers N`` shares between its server processes (server/shared.py),
hammered by real concurrent processes: one token bucket per API key for the whole server, and
one server-wide count of requests waiting for their proofs."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from server.auth import RateLimiter, Tier
from server.errors import RateLimited
from server.shared import PROBE, ProcessCounts, SharedBuckets, prepare

PROCESSES = 4
TIER = Tier(rate_per_s=5, burst=50)
FORK = multiprocessing.get_context("fork")


def _takes(path: str, key: str, now: float, tries: int, start, out) -> None:
    """One process: ``tries`` requests of ``key`` at the instant ``now``; puts how many passed."""
    limiter = RateLimiter(SharedBuckets(Path(path)))
    start.wait()
    passed = 0
    for _ in range(tries):
        try:
            limiter.take(key, TIER, now=now)
            passed += 1
        except RateLimited:
            pass
    out.put(passed)


def _run(target, *args) -> list:
    start, out = FORK.Event(), FORK.Queue()
    procs = [FORK.Process(target=target, args=(*args, start, out)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    start.set()  # all at once
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return results


def test_concurrent_processes_share_one_bucket_per_key(tmp_path):
    path = str(tmp_path / "buckets")
    # 4 processes x 100 requests at one instant: the burst passes once, not once per process
    assert sum(_run(_takes, path, "k1", 100.0, 100)) == TIER.burst
    # 2 s later: 2 s of the rate more, for the whole server
    assert sum(_run(_takes, path, "k1", 102.0, 100)) == 2 * TIER.rate_per_s
    # another key has its own bucket
    assert sum(_run(_takes, path, "k2", 102.0, 100)) == TIER.burst


def test_in_process_limiters_each_allow_the_burst():
    """What the shared bucket replaces: one in-memory bucket per process."""
    limiters = [RateLimiter() for _ in range(PROCESSES)]
    passed = 0
    for limiter in limiters:
        for _ in range(100):
            try:
                limiter.take("k", TIER, now=100.0)
                passed += 1
            except RateLimited:
                pass
    assert passed == PROCESSES * TIER.burst


def test_a_full_neighbourhood_reuses_the_stalest_slot(tmp_path, monkeypatch):
    monkeypatch.setattr("server.shared._key_hash", lambda key: int(key))  # every key in slot 0's probe
    buckets = RateLimiter(SharedBuckets(tmp_path / "buckets"))
    tier = Tier(rate_per_s=1, burst=1)
    for k in range(1, PROBE + 1):  # PROBE keys take every slot, key 1 longest ago
        buckets.take(str(k * 16384), tier, now=float(k))
    with pytest.raises(RateLimited):
        buckets.take(str(PROBE * 16384), tier, now=float(PROBE))
    buckets.take(str((PROBE + 1) * 16384), tier, now=float(PROBE))  # a new key: key 1's slot
    with pytest.raises(RateLimited):
        buckets.take(str((PROBE + 1) * 16384), tier, now=float(PROBE))


def _waits(path: str, index: int, limit: int, start, out) -> None:
    counts = ProcessCounts(Path(path), index, PROCESSES)
    start.wait()
    out.put(sum(counts.enter(limit) for _ in range(10)))


def test_waiter_counts_are_bounded_for_the_whole_server(tmp_path):
    path = str(tmp_path / "waiters")
    start, out = FORK.Event(), FORK.Queue()
    procs = [FORK.Process(target=_waits, args=(path, i, 7, start, out)) for i in range(PROCESSES)]
    for p in procs:
        p.start()
    start.set()
    assert sum(out.get(timeout=60) for _ in procs) == 7  # not 7 per process
    for p in procs:
        p.join(60)


def test_a_restarted_process_drops_what_its_predecessor_held(tmp_path):
    first, other = ProcessCounts(tmp_path / "w", 0, 2), ProcessCounts(tmp_path / "w", 1, 2)
    assert first.enter(2) and first.enter(2)
    assert not other.enter(2)
    ProcessCounts(tmp_path / "w", 0, 2)  # process 0 started again: its waiters died with it
    assert other.enter(2) and other.total() == 1
    other.leave()
    assert other.total() == 0


def test_prepare_empties_the_shared_state(tmp_path):
    prometheus = prepare(tmp_path)
    (prometheus / "counter_1.db").write_bytes(b"x")
    SharedBuckets(tmp_path / "ratelimit-buckets.bin").close()
    assert prepare(tmp_path) == prometheus
    assert list(prometheus.iterdir()) == [] and not (tmp_path / "ratelimit-buckets.bin").exists()
