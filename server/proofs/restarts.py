"""When a supervised child process that exited may be started again (prover workers, the Ray
dispatcher's process): at once after a long life, else after a backoff that doubles with each
quick exit in a row, so that a child that cannot start (a broken install, Ray's cluster down)
is not restarted in a tight loop."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RestartBackoff:
    quick_s: float  # an exit within this of the start is quick
    cap_s: float  # the longest wait: 2, 4, 8, ... up to this many seconds
    started: float = 0.0  # time.monotonic() of the last start
    fails: int = 0  # quick exits in a row
    next_start: float = 0.0

    def started_at(self, now: float) -> None:
        self.started = now

    def exited_at(self, now: float) -> None:
        quick = now - self.started < self.quick_s
        self.fails = self.fails + 1 if quick else 0
        self.next_start = now + (min(2 ** self.fails, self.cap_s) if quick else 0.0)

    def due(self, now: float) -> bool:
        return now >= self.next_start
