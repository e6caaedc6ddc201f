"""The CLI's result table: a system whose reviews hold no points has undefined precision and F1, which
arrive as NaN locally and as the string "NaN" through the gRPC result's JSON form."""

from __future__ import annotations

import pytest

from reviewstack.evaluation import cli


@pytest.mark.parametrize("undefined", [float("nan"), "NaN"])
def test_undefined_metrics_print_as_a_dash(
    undefined: object, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli.out, "width", 160)  # one line per system, whatever the terminal
    row = {
        "name": "all-empty", "papers": 3, "hits": 0.0, "recall": 0.0, "recall_low": 0.0,
        "recall_high": 0.0, "precision": undefined, "precision_low": undefined,
        "precision_high": undefined, "f1": undefined,
    }  # fmt: skip
    defined = {**row, "name": "writes-points", "precision": 0.25, "precision_low": 0.1, "precision_high": 0.4,
               "f1": 0.2}  # fmt: skip
    summary = {
        "eval_id": "e1",
        "papers": 3,
        "systems": [row, defined],
        "exclusions": 0,
        "report_html": "r.html",
    }
    cli._show(summary, as_json=False)
    printed = capsys.readouterr().out
    empty_line = next(line for line in printed.splitlines() if "all-empty" in line)
    assert "— (—–—)" in empty_line and "nan" not in empty_line.lower()
    points_line = next(line for line in printed.splitlines() if "writes-points" in line)
    assert "0.250 (0.100–0.400)" in points_line and "0.200" in points_line
    assert "report: r.html" in printed
