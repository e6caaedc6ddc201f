"""bench/train_throughput.py runs every variant's code path on a tiny model on CPU, so the GPU benchmark
does not rot between the rare runs on a GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_run_of_every_variant(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    command = [
        sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--tiny",
        "--variants", "baseline,ours,auto-2gpu,zero3-2gpu",
        "--steps", "1", "--warmup", "1", "--effective-batch", "2",
        "--model-dir", str(tmp_path / "model"), "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REVIEWSTACK_COMMIT": "test"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {row["variant"]: row for row in report["rows"]}
    assert set(rows) == {"baseline", "ours", "auto-2gpu", "zero3-2gpu"}
    failed = {name: row["error"] for name, row in rows.items() if "error" in row}
    assert not failed, (failed, result.stderr[-3000:])
    # an effective batch of 2: two micro-batches per update on one process, one per rank on two
    assert {name: row["accumulation"] for name, row in rows.items()} == {
        "baseline": 2, "ours": 2, "auto-2gpu": 1, "zero3-2gpu": 1,
    }  # fmt: skip
    assert {row["tokens_per_step"] for row in rows.values()} == {2 * 256}
    assert rows["zero3-2gpu"]["gpus"] == rows["auto-2gpu"]["gpus"] == 2
    # auto takes what the training job would: on two CPU processes (memory unknown) the fastest layout
    assert {name: row.get("layout") for name, row in rows.items()} == {
        "baseline": None, "ours": "single", "auto-2gpu": "zero3-replicated", "zero3-2gpu": "zero3",
    }  # fmt: skip
    # the memory model's prediction beside each of this trainer's rows (measured on GPUs only)
    assert all(rows[name]["predicted_peak_gib"] > 0 for name in ("ours", "auto-2gpu", "zero3-2gpu"))
    # same tiny model, same first batch: every path computes the same loss before its first update
    first = {name: row["loss_first"] for name, row in rows.items()}
    assert max(first.values()) - min(first.values()) < 1e-3, first
    assert report["commit"] == "test" and report["baseline_tok_s"] > 0 and report["ours_tok_s"] > 0
    assert set(report["speedup_over_ours"]) == {"baseline", "auto-2gpu", "zero3-2gpu"}
