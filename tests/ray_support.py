"""A real local Ray cluster for tests and benchmarks: a head and extra worker nodes, each a
``ray start --block`` process in its own session (process group), so a test can kill -9 one
node with everything it started. Small CPU counts and object stores; no dashboard.

Ray advertises this machine's own interface address for its nodes (a multi-node Ray refuses
127.0.0.1); every process stays on this machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testkit.server_process import free_port, parent_pids

RAY = str(Path(sys.executable).with_name("ray"))
# fast failure detection: a killed node is declared dead in ~3 s, not ~30 s
FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
               "RAY_health_check_initial_delay_ms": "1000"}


class RayCluster:
    def __init__(self, head_cpus: int = 1, env: dict | None = None) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.tmp = Path(tempfile.mkdtemp(prefix="vr-"))  # short: Ray's socket paths
        # RAY_AUTH_MODE: Ray 2.60's head turns on token authentication when ~/.ray/auth_token
        # exists (a private instance, `verinfer serve --prover-executor ray`, writes one), and
        # drivers not told the mode then cannot join: a loopback test cluster needs no token
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", **FAST_HEALTH,
                    **(env or {})}
        self.nodes: dict[str, subprocess.Popen] = {}
        self._start("head", ["--head", f"--port={self.port}", "--include-dashboard=false",
                             f"--temp-dir={self.tmp}"], head_cpus)

    def _start(self, name: str, args: list[str], cpus: int) -> None:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - the node's, for its life
        self.nodes[name] = subprocess.Popen(
            [RAY, "start", *args, f"--num-cpus={cpus}", f"--node-name={name}", "--block",
             "--object-store-memory=100000000", "--disable-usage-stats",
             f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def add_node(self, name: str, cpus: int = 1) -> None:
        self._start(name, [f"--address={self.address}"], cpus)

    def wait_nodes(self, n: int, timeout: float = 180) -> None:
        """Block until ``n`` nodes are alive (asked by a short-lived driver process)."""
        code = ("import ray, sys, time; ray.init(address=sys.argv[1], logging_level='ERROR', "
                "log_to_driver=False)\nend = time.time() + float(sys.argv[3])\n"
                "while sum(x['Alive'] for x in ray.nodes()) < int(sys.argv[2]):\n"
                "    assert time.time() < end, ray.nodes()\n    time.sleep(0.3)\n")
        end = time.monotonic() + timeout
        while True:
            for name, p in self.nodes.items():
                if p.poll() is not None:
                    raise RuntimeError(f"ray node {name} exited {p.returncode}:\n{self.logs()}")
            proc = subprocess.run([sys.executable, "-c", code, self.address, str(n),
                                   str(max(1.0, end - time.monotonic()))],
                                  env=self.env, capture_output=True, text=True)
            if proc.returncode == 0:
                return
            if time.monotonic() > end:
                raise RuntimeError(f"ray: {n} nodes not up in {timeout}s: {proc.stderr[-2000:]}\n"
                                   f"{self.logs()}")
            time.sleep(1)

    def kill9(self, name: str) -> None:
        """kill -9 a node: its process group (raylet and agents) and every process it started.
        Ray runs each worker (an actor) in a process group of its own; left alone it exits
        only as it notices its raylet gone, after the task in hand, which on a fast machine
        was the whole proof the test meant to cut short."""
        p = self.nodes[name]
        workers = _descendants(p.pid)  # before the kill: then they are re-parented
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {f.name} ---\n{f.read_text(errors='replace')[-2000:]}"
                         for f in sorted(self.tmp.glob("*.log")))

    def stop(self) -> None:
        for name in reversed(list(self.nodes)):
            self.kill9(name)
        time.sleep(0.5)
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for child, parent in parent_pids().items():
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
