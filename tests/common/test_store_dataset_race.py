"""The case that corrupted datasets: the same `reviewstack data build` run twice at once on one store
(two DataPrep replicas given the same request, or the CLI beside a server). Both must succeed and leave
one complete dataset whose manifest lists exactly the files that are there, with their hashes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reviewstack.common.store import LocalStore, open_store
from reviewstack.common.store.base import STAGING_DIR

from .store_worker import check_published

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "neurips2025-sample"


def source_of(folder: Path, papers: int) -> Path:
    for paper in sorted(p.stem for p in (SAMPLE / "papers").glob("*.md"))[:papers]:
        for sub, suffix in (("papers", ".md"), ("reviews", ".json")):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(SAMPLE / sub / f"{paper}{suffix}", folder / sub / f"{paper}{suffix}")
    return folder


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_two_identical_builds_at_once_leave_one_intact_dataset(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    env = dict(os.environ)
    if backend == "s3":
        env.update(request.getfixturevalue("s3_server").env())
        out = f"s3://build-race-{os.getpid()}/store"
        store = open_store(out, request.getfixturevalue("s3_server").settings())
    else:
        out = str(tmp_path / "store")
        store = LocalStore(out)
    source = source_of(tmp_path / "src", 3)
    command = [str(Path(sys.executable).with_name("reviewstack")), "data", "build", "--source", str(source)]
    command += ["--paper-version", "decision", "--out", out, "--name", "race"]
    builds = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) for _ in range(2)
    ]
    outputs = [b.communicate(timeout=240)[0].decode() for b in builds]
    assert [b.returncode for b in builds] == [0, 0], outputs
    [prefix] = store.list_published("datasets/race")
    manifest = store.read_manifest(prefix)
    assert {"train.jsonl", "val.jsonl", "test.jsonl", "ground_truth.jsonl"} <= set(manifest["files"])
    assert sorted(store.keys(prefix)) == sorted(
        f"{prefix}/{n}" for n in [*manifest["files"], "manifest.json"]
    )
    assert check_published(store, prefix) == []
    assert [k for k, _ in store._iter_internal(STAGING_DIR)] == []
