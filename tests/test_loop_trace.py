"""bench.loop_trace's split of the loop's time (the figures in docs/performance.md)."""

from __future__ import annotations

import pytest

from bench.loop_trace import analyse


def _timeline(cycles: int, stall_every: int) -> list[list]:
    """Synthetic events, µs apart: per cycle 8 requests read (50 each), a batch (400), a hand-off
    (100), then a wait for the writer (200, or 2,000 every ``stall_every``-th cycle), answers."""
    t, events = 0.0, []

    def at(step_us: float, *what) -> None:
        nonlocal t
        events.append([t * 1e-6, *what])
        t += step_us

    for k in range(cycles):
        for _ in range(8):
            at(50, "req")
        at(400, "run", 8)
        at(100, "ran")  # ran -> handoff
        at(100, "handoff", 8)
        at(2000 if (k + 1) % stall_every == 0 else 200, "handed")
        at(10, "answered", 8)
        for _ in range(8):
            at(30, "resp")
    return events


def test_the_loop_time_is_split_by_what_it_did_and_long_waits_are_counted():
    r = analyse(_timeline(32, stall_every=4), stall_ms=1.0)
    pairs = {p["pair"]: p for p in r["pairs"]}
    assert r["requests"] == 256 and r["rows_per_batch"] == 8
    assert pairs["run -> ran"]["mean_us"] == pytest.approx(400) and pairs["run -> ran"]["n"] == 32
    assert pairs["handed -> answered"]["n"] == 32
    cycle_us = 8 * 50 + 400 + 100 + 100 + 10 + 8 * 30
    waits_us = 24 * 200 + 8 * 2000
    span_us = 32 * cycle_us + waits_us - 30  # the last resp ends the span
    assert r["waiting_for_writer_share"] == pytest.approx(waits_us / span_us, abs=1e-3)
    assert [w["ms"] for w in r["long_waits"]] == [2.0] * 8
    # every 4th cycle: 32 requests between two long waits
    assert [w["requests_since_last"] for w in r["long_waits"][1:]] == [32] * 7
    assert sum(p["share"] for p in r["pairs"]) == pytest.approx(1.0, abs=1e-3)


def test_no_events_is_an_error_not_a_table():
    with pytest.raises(SystemExit, match="no events"):
        analyse([], 1.0)
