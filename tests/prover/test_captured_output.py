"""prover.progress.captured_output: EZKL's prints go to a log while a step runs, by redirecting
the process's fds 1 and 2. Threads that prove at once (the relayer's workers) take turns: else
one restores what another redirected, and fd 2 stays in a log file (the relayer's own lines
vanished from its stderr)."""

from __future__ import annotations

import os
import threading

from prover.progress import captured_output


def test_threads_take_turns_and_fd2_comes_back(tmp_path):
    before = os.fstat(2)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a():
        with captured_output(tmp_path / "a.log"):
            a_in.set()
            b_in.wait(0.5)  # b enters now if nothing stops it (it saves fd 2: a.log)
        a_out.set()

    def b():
        a_in.wait(5)
        with captured_output(tmp_path / "b.log"):
            b_in.set()
            a_out.wait(5)  # leaves after a: restoring what it saved

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)  # not a.log's
    os.write(2, b"after both\n")
    assert b"after both" not in (tmp_path / "a.log").read_bytes()
