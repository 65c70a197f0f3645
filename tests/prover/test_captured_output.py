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


def test_with_private_stdio_the_log_takes_the_proving_threads_lines_alone(tmp_path):
    """A server or the relayer keeps logging from other threads while one proves: after
    private_stdio() their lines stay on stderr and stdout, and the EZKL log gets the proving
    thread's alone: EZKL's Rust prints (to the fds) and its log records (pyo3-log hands them
    to Python's logging on the calling thread; a witness failure's cause is read from them),
    those as their bare messages, not in the format of the process's handler."""
    import subprocess
    import sys
    import textwrap

    log = tmp_path / "ezkl.log"
    script = textwrap.dedent(f"""
        import logging, os, sys, threading
        from pathlib import Path
        from prover.progress import captured_output, private_stdio

        private_stdio()
        logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
        with captured_output(Path({str(log)!r})):
            os.write(2, b"rust says hello\\n")
            logging.error("ezkl says why")
            t = threading.Thread(target=lambda: (logging.info("relayer line"), print("said")))
            t.start()
            t.join()
        logging.info("after")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text() == "rust says hello\nezkl says why\n"
    assert proc.stderr == "[INFO] relayer line\n[INFO] after\n"
    assert proc.stdout == "said\n"


def test_without_logging_set_up_other_threads_warnings_still_reach_stderr(tmp_path):
    """No log handler (the CLI): the capturing thread's records go to the EZKL log bare, and
    another thread's warnings still reach stderr through logging's last resort (the handler
    that takes the capturing thread's records must not swallow them)."""
    import subprocess
    import sys
    import textwrap

    log = tmp_path / "ezkl.log"
    script = textwrap.dedent(f"""
        import logging, threading
        from pathlib import Path
        from prover.progress import captured_output, private_stdio

        private_stdio()
        with captured_output(Path({str(log)!r})):
            logging.getLogger("ezkl").warning("ezkl says why")
            t = threading.Thread(target=lambda: logging.getLogger("relayer").warning("relayer line"))
            t.start()
            t.join()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text() == "ezkl says why\n"
    assert proc.stderr == "relayer line\n"
