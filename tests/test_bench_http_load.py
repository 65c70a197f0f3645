"""bench.http_load's parts that turn a load generator's output into figures."""

from __future__ import annotations

import shutil

import pytest

from bench.http_load import _batch_figures, _seconds, main


@pytest.mark.parametrize("text, seconds", [("812.00us", 812e-6), ("1.20ms", 1.2e-3), ("2.01s", 2.01),
                                           ("1.00m", 60.0)])
def test_wrk_latencies_are_read_in_seconds(text, seconds):
    assert _seconds(text) == pytest.approx(seconds)


def test_batch_figures_are_taken_between_two_readings_of_the_metrics():
    # (batches, rows, engine seconds) before and after: 10 batches of 16 rows in 4 ms
    assert _batch_figures((5, 80, 0.001), (15, 240, 0.005)) == {"rows_per_batch": 16.0, "engine_us_per_row": 25.0}
    assert _batch_figures((5, 80, 0.001), (5, 80, 0.001)) is None  # no batch ran in between
    assert _batch_figures(None, (5, 80, 0.001)) is None  # a server without them (the minimal app)


def test_without_wrk_the_wrk_client_is_refused_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    assert main(["--client", "wrk"]) == 2
    assert capsys.readouterr().err.strip().startswith("no wrk:")
