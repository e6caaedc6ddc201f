"""Training fixtures: a published dataset in a store (the controller only reads its manifest) and the
specs that point at it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from reviewstack.common.store import ArtifactStore, open_store

BIN = Path(__import__("sys").executable).parent
HAS_TRAIN_JOB = shutil.which("reviewstack-train", path=str(BIN)) is not None
NO_TRAIN_JOB = "the training job's entry point `reviewstack-train` is not installed in .venv (training-job/)"


def publish_dataset(store: ArtifactStore, name: str = "tiny", train: int = 2, kind: str = "dataset") -> str:
    """A published dataset folder with the files the job reads; returns its URI."""
    prefix = f"datasets/{name}/v1"
    with store.publish(prefix) as pub:
        for split in ("train", "val", "test"):
            pub.put_bytes(f"{split}.jsonl", b"")
        pub.manifest.update(kind=kind, name=name, version="v1", counts={"train": train, "val": 1, "test": 1})
    return store.uri_for(prefix)


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return open_store(str(tmp_path / "store"))


@pytest.fixture
def dataset(store: ArtifactStore) -> str:
    return publish_dataset(store)


def spec_data(dataset: str, output: str, **fields: Any) -> dict[str, Any]:
    return {
        "run_id": "run-a",
        "dataset": dataset,
        "base_model": "/models/llama-3-8b",
        "output": output,
        **fields,
    }


def write_spec(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path
