"""``serve --workers`` supervisor (server/supervisor.py) without real processes: what it does
when a child cannot be started again."""

from __future__ import annotations

import errno
import time

from server.settings import ServerSettings
from server.supervisor import Supervisor


def test_a_refused_fork_is_tried_again_later_and_does_not_stop_the_server(monkeypatch, tmp_path, capsys):
    """Restarting a server process that died (the OOM killer) can itself fail: fork refused
    for memory, or at the unit's task limit (EAGAIN). Before, the OSError left the supervise
    loop and stopped every process of the server; now that child is tried again later."""
    sup = Supervisor(ServerSettings(home=tmp_path, workers=2))
    tries: list[str] = []
    ticks = 0

    def refused(child) -> None:
        tries.append(child.name)
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    def tick(timeout: float) -> None:
        nonlocal ticks
        ticks += 1
        sup._stop = ticks >= 3

    monkeypatch.setattr(sup, "_start", refused)
    monkeypatch.setattr(sup, "_read_ready", tick)
    before = time.monotonic()
    sup._supervise()
    assert tries == ["server process 0", "server process 1"]  # once each, then backing off
    # backed off 2 s (2 ** fails) from the failed try: read against the clock before the
    # loop, not the clock now (a stalled machine would make "still in the future" false)
    assert all(w.fails == 1 and w.next_start >= before + 2 for w in sup.workers)
    assert "cannot start server process 0 ([Errno 11] Resource temporarily unavailable)" in capsys.readouterr().err
