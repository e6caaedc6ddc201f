"""bench/serve_throughput.py runs every code path on a tiny model on CPU, so the GPU benchmark does not
rot between the rare runs on a GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_run_of_every_measurement(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    command = [
        sys.executable, str(ROOT / "bench" / "serve_throughput.py"), "--tiny",
        "--model-dir", str(tmp_path / "model"), "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "REVIEWSTACK_COMMIT": "test"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["commit"] == "test" and report["card"] == "cpu"
    for key in ("baseline_bs1_tok_s", "bs1_tok_s", "agg4_tok_s"):
        assert report[key] > 0, key
    for key in ("penalty", "repetition", "sampled"):
        assert isinstance(report[f"{key}_overhead_pct_agg4"], float), key
    assert len(report["rows"]) == 9  # the baseline and four decodings at batch 1 and 4 at once
