"""Checkpoints are loaded without running anything from the store: RNG states are saved in a form a
weights-only load accepts, a file swapped after publication is refused, and a pickle carrying a payload
(in optimizer.pt, scheduler.pt, rng.pt or a DeepSpeed shard) fails with a clear error and never runs."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reviewstack.common.errors import FailedPrecondition
from reviewstack.common.store import ArtifactStore, LocalStore
from reviewstack.common.store.s3 import S3Store
from reviewstack.trainjob import checkpoint
from reviewstack.trainjob.checkpoint import TrainerState

RUN = "runs/r"
STEP = f"{RUN}/checkpoints/step-3"


class Payload:
    """What an attacker would pickle: unpickling calls os.mkdir(marker), a side effect a test can see."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def payload_bytes(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"state": {}, "param_groups": [Payload(marker)]}, buffer)
    return buffer.getvalue()


def training_objects(seed: int = 0) -> tuple[torch.nn.Module, Any, Any]:
    from transformers import get_scheduler

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    model[1].bias.requires_grad_(False)  # a frozen weight, as in LoRA
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=10)
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def save(store: ArtifactStore) -> tuple[torch.nn.Module, Any, Any]:
    model, optimizer, scheduler = training_objects()
    state = TrainerState(3, {"epoch": 0, "position": 3, "n": 8}, 2, 0.5, 120)
    assert checkpoint.save_checkpoint(store, RUN, model, optimizer, scheduler, state) == STEP
    return model, optimizer, scheduler


def load(store: ArtifactStore) -> tuple[TrainerState, Any, Any]:
    model, optimizer, scheduler = training_objects(seed=1)
    return checkpoint.load_checkpoint(store, STEP, model, optimizer, scheduler), optimizer, scheduler


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ArtifactStore:
    return request.getfixturevalue(f"{request.param}_store")


def test_resume_restores_optimizer_scheduler_and_every_rng(store: ArtifactStore, tmp_path: Path) -> None:
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    _, optimizer, scheduler = save(store)
    expected = draws()
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    state, restored, restored_scheduler = load(store)
    assert draws() == expected  # every stream continues where the checkpoint left it
    assert state.step == 3 and state.sampler == {"epoch": 0, "position": 3, "n": 8}
    assert restored_scheduler.state_dict() == scheduler.state_dict()
    for key, value in optimizer.state_dict()["state"].items():
        for name, tensor in value.items():
            torch.testing.assert_close(restored.state_dict()["state"][key][name], tensor)
    # the RNG file is plain data: the strictest load, with nothing allowed beyond tensors, reads it
    store.download(f"{STEP}/rng.pt", tmp_path / "rng.pt")
    assert set(torch.load(tmp_path / "rng.pt", weights_only=True)) == {"python", "numpy", "torch"}


def test_checkpoint_written_by_the_previous_code_still_loads(local_store: LocalStore, tmp_path: Path) -> None:
    """Before, rng.pt held numpy's state tuple with its ndarray: still read, with exactly the numpy
    helpers that rebuild an array allowed."""
    save(local_store)
    np.random.seed(5)
    legacy = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    expected = draws()
    torch.save(legacy, tmp_path / "rng.pt")
    rewrite(local_store, "rng.pt", (tmp_path / "rng.pt").read_bytes(), manifest=True)
    np.random.seed(99)
    load(local_store)
    assert draws() == expected


def rewrite(store: ArtifactStore, name: str, data: bytes, *, manifest: bool) -> None:
    """Replace a checkpoint file through the store (its recorded hash then matches the new bytes), and
    with `manifest` also the manifest's entry for it: what someone with write access to the bucket can do."""
    store.put_bytes(f"{STEP}/{name}", data)
    if manifest:
        doc = store.read_manifest(STEP)
        doc["files"][name] = {"sha256": store.stat(f"{STEP}/{name}").sha256, "size": len(data)}
        store.put_bytes(f"{STEP}/manifest.json", json.dumps(doc).encode())


def swap_behind_the_store(store: ArtifactStore, name: str, data: bytes) -> None:
    """Replace the bytes without the store's hash record (a file edited in place, a raw S3 upload)."""
    if isinstance(store, LocalStore):
        (store.root / STEP / name).write_bytes(data)
    else:
        assert isinstance(store, S3Store)
        store.client.put_object(store.bucket, f"{store.prefix}/{STEP}/{name}", io.BytesIO(data), len(data))


@pytest.mark.parametrize(
    ("backend", "name", "how"),
    [
        ("local", "optimizer.pt", "store-and-manifest"),
        ("local", "scheduler.pt", "store-and-manifest"),
        ("local", "rng.pt", "store-and-manifest"),
        ("s3", "optimizer.pt", "store-and-manifest"),
        ("local", "optimizer.pt", "store-only"),
        ("s3", "optimizer.pt", "store-only"),
        ("local", "optimizer.pt", "behind-the-store"),
        ("s3", "optimizer.pt", "behind-the-store"),
    ],
)
def test_a_payload_in_a_checkpoint_is_refused_and_never_runs(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, name: str, how: str
) -> None:
    store: ArtifactStore = request.getfixturevalue(f"{backend}_store")
    save(store)
    live, marker = tmp_path / "live", tmp_path / "pwned"
    (tmp_path / "probe.pt").write_bytes(payload_bytes(live))
    torch.load(tmp_path / "probe.pt", weights_only=False)  # the old loading runs it: the payload is real
    assert live.is_dir()
    data = payload_bytes(marker)
    if how == "behind-the-store":
        swap_behind_the_store(store, name, data)
    else:
        rewrite(store, name, data, manifest=how == "store-and-manifest")
    with pytest.raises(FailedPrecondition) as caught:
        load(store)
    message = str(caught.value)
    assert store.uri_for(f"{STEP}/{name}") in message and "start a new run id" in message
    if how == "store-and-manifest":  # every hash matches: the weights-only load is what stops it
        assert "weights-only load refuses it" in message and "mkdir" in message
    else:
        assert "not the one its manifest lists" in message
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["torch.save", "raw-pickle"])
def test_a_payload_in_a_deepspeed_shard_is_refused_before_deepspeed_reads_it(
    local_store: LocalStore, tmp_path: Path, kind: str
) -> None:
    """DeepSpeed unpickles its shards itself, without weights_only: a shard naming anything beyond
    DeepSpeed's own plain classes is refused before the engine sees the checkpoint."""
    marker = tmp_path / "pwned"
    shard = "zero/state/zero_pp_rank_0_mp_rank_00_optim_states.pt"
    if kind == "torch.save":
        data = payload_bytes(marker)
    else:  # a plain pickle (protocol 4 names its globals with STACK_GLOBAL, which no scan may miss)
        data = pickle.dumps({"optimizer_state_dict": Payload(marker)}, protocol=4)
    model, _, _ = training_objects()
    with local_store.publish(STEP) as pub:
        pub.put_bytes(shard, data)
        plain = io.BytesIO()
        torch.save({"module": {}, "ds_version": "0.19.8"}, plain)  # a harmless shard, scanned first
        pub.put_bytes("zero/state/zero_pp_rank_0_mp_rank_00_model_states.pt", plain.getvalue())
        pub.put_bytes("zero/latest", b"state")
        pub.put_bytes("trainable.json", json.dumps(checkpoint.trainable_shapes(model)).encode())
        pub.put_bytes("trainer_state.json", b"{}")
        pub.manifest.update({"kind": "checkpoint", "step": 3, "format": checkpoint.ZERO3, "world_size": 1})

    class Engine:  # the real DeepSpeed engine must never be reached
        def load_checkpoint(self, *args: Any, **kwargs: Any) -> None:
            pytest.fail("DeepSpeed was handed a checkpoint that names a payload")

    with pytest.raises(FailedPrecondition) as caught:
        checkpoint.load_zero_checkpoint(local_store, STEP, Engine(), model, rank=0)
    assert local_store.uri_for(f"{STEP}/{shard}") in str(caught.value)
    assert ("mkdir" if kind == "torch.save" else "not a plain torch.save file") in str(caught.value)
    assert "Nothing in it was run" in str(caught.value)
    assert not marker.exists()
