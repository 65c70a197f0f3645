"""bench.wakeup (a figure of docs/performance.md) runs and writes what it measured."""

from __future__ import annotations

import json

from bench.wakeup import main


def test_the_round_trips_are_measured_both_ways(tmp_path, capsys):
    out = tmp_path / "wakeup.json"
    assert main(["--round-trips", "50", "--gaps", "0", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["echo"] for r in rows] == ["blocking", "polling"]
    assert all(0 < r["median_us"] <= r["p90_us"] for r in rows)
    assert "round trip median" in capsys.readouterr().out
