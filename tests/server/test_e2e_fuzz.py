"""The real server process fuzzed from its own OpenAPI schema with schemathesis (its CLI, all
checks): no 5xx, no answer that breaks the schema (status codes, content types, bodies, the
``Allow`` header of a 405). Bounded: deterministic generation, a few dozen cases per route."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testkit.server_process import ServerProcess

pytestmark = pytest.mark.e2e


def test_schemathesis_finds_nothing(tmp_path):
    server = ServerProcess(tmp_path / "home", env={"VERINFER_MAX_BODY_BYTES": "65536"})
    try:
        server.wait_ready()
        schemathesis = Path(sys.executable).with_name("schemathesis")
        run = subprocess.run(
            [str(schemathesis), "run", f"{server.base}/openapi.json", "--checks", "all",
             "--max-examples", "25", "--generation-deterministic", "--workers", "1"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert "Tested: " in run.stdout  # it ran against the routes
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()[-3000:]
