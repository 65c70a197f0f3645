"""The restart backoff of supervised children (prover workers, the Ray dispatcher's process)."""

from __future__ import annotations

from server.proofs.restarts import RestartBackoff


def test_quick_exits_in_a_row_double_the_wait_up_to_the_cap():
    b = RestartBackoff(quick_s=5.0, cap_s=30.0)
    waits = []
    now = 100.0
    for _ in range(7):
        b.started_at(now)
        now += 1.0  # exits a second after its start
        b.exited_at(now)
        assert not b.due(now)
        waits.append(b.next_start - now)
        now = b.next_start
        assert b.due(now)
    assert waits == [2, 4, 8, 16, 30, 30, 30]


def test_a_long_life_restarts_at_once_and_forgets_the_quick_exits():
    b = RestartBackoff(quick_s=5.0, cap_s=30.0)
    b.started_at(0.0)
    b.exited_at(1.0)
    assert b.fails == 1
    b.started_at(3.0)
    b.exited_at(60.0)  # lived 57 s
    assert b.fails == 0 and b.due(60.0)
