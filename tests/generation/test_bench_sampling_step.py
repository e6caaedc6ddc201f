"""bench/sampling_step.py runs both paths on a CPU (`--tiny`) and writes its JSON: what the GPU run
depends on is exercised in every `make test`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ..assets import ROOT


def test_tiny_run_of_both_paths(tmp_path):
    out = tmp_path / "sampling.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "sampling_step.py"),
        "--tiny",
        "--steps",
        "2",
        "--out",
        str(out),
    ]
    env = {**os.environ, "REVIEWSTACK_COMMIT": "test"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["commit"] == "test" and report["card"] == "cpu" and report["vocab"] == 4096
    assert len(report["ms_per_step"]) == 6 and all(ms > 0 for ms in report["ms_per_step"].values())
