"""`reviewstack data …` as a user runs it: progress, a summary, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import copy_papers, sample_ids

CLI = str(Path(sys.executable).parent / "reviewstack")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=600)


def test_build_list_and_show(tmp_path):
    source = copy_papers(tmp_path / "src", sample_ids()[:3])
    out = tmp_path / "store"
    build = ("data", "build", "--source", str(source), "--paper-version", "late", "--out", str(out))
    run = _run(*build, "--name", "tiny")
    assert run.returncode == 0, run.stderr
    assert "dataset tiny v" in run.stdout and "published" in run.stdout
    assert "records (train/val/test)" in run.stdout and "3 (1/1/1)" in run.stdout
    manifest_path = next(out.glob("datasets/tiny/*/manifest.json"))
    assert f"manifest: file://{manifest_path}" in run.stdout.replace("\n", "")
    version = manifest_path.parent.name
    listed = _run("data", "list", "--store", str(out))
    assert listed.returncode == 0 and version in listed.stdout
    shown = _run("data", "show", "--store", str(out), "tiny", version)
    assert json.loads(shown.stdout)["counts"]["records"] == 3
    again = _run(*build, "--name", "tiny")
    assert again.returncode == 0 and "found (identical inputs and settings)" in again.stdout


def test_errors_are_one_line_without_traceback(tmp_path):
    def build(source: str, *extra: str) -> subprocess.CompletedProcess:
        return _run(
            "data",
            "build",
            "--source",
            source,
            "--paper-version",
            "late",
            "--out",
            str(tmp_path / "o"),
            "--name",
            "x",
            *extra,
        )

    run = build(str(tmp_path / "missing"))
    assert run.returncode == 2
    assert "error:" in run.stderr and "missing does not exist" in run.stderr.replace("\n", "")
    assert "Traceback" not in run.stderr
    bad_split = build(str(tmp_path), "--split", "0.9,0.9,0.1")
    assert (
        bad_split.returncode == 2 and "sum to 1" in bad_split.stderr and "Traceback" not in bad_split.stderr
    )


def test_missing_paper_version_is_a_usage_error(tmp_path):
    run = _run("data", "build", "--source", str(tmp_path), "--out", str(tmp_path / "o"), "--name", "x")
    assert run.returncode == 2 and "--paper-version" in run.stderr
