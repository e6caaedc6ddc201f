"""Checkpoints in the store: complete or absent, and enough to continue exactly where a run stopped.

A checkpoint (`runs/<id>/checkpoints/step-N/`) holds the trainable weights (LoRA adapter tensors, or all
weights for full fine-tuning), the optimizer and scheduler state, the RNG states and the data position.
It is a store publication, so its manifest is written last: a pod killed while uploading leaves a
folder that `latest_checkpoint` does not see, and the restarted run resumes from the one before.
"""

from __future__ import annotations

import json
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from reviewstack.common.errors import InvalidArgument
from reviewstack.common.store import ArtifactStore

_STEP = re.compile(r"/step-(\d+)$")


@dataclass(frozen=True)
class TrainerState:
    """What besides tensors a run needs to continue: counters, data position, best-so-far."""

    step: int
    sampler: dict[str, int]
    best_step: int | None
    best_val_loss: float | None
    tokens_seen: int

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    store: ArtifactStore, run_prefix: str, model: Any, optimizer: Any, scheduler: Any, state: TrainerState
) -> str:
    prefix = f"{run_prefix}/checkpoints/step-{state.step}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_file(trainable_state(model), folder / "trainable.safetensors")
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")
        torch.save(_rng_state(), folder / "rng.pt")
        (folder / "trainer_state.json").write_text(json.dumps(state.to_json(), indent=2))
        with store.publish(prefix, overwrite=True) as pub:
            pub.put_dir(folder)
            pub.manifest.update({"kind": "checkpoint", "step": state.step})
    return prefix


def latest_checkpoint(store: ArtifactStore, run_prefix: str) -> str | None:
    """The complete (published) checkpoint with the highest step, if any."""
    steps = []
    for prefix in store.list_published(f"{run_prefix}/checkpoints"):
        match = _STEP.search(prefix)
        if match:
            steps.append((int(match.group(1)), prefix))
    return max(steps)[1] if steps else None


def load_checkpoint(
    store: ArtifactStore, prefix: str, model: Any, optimizer: Any, scheduler: Any
) -> TrainerState:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        store.download_dir(prefix, folder)
        tensors = load_file(folder / "trainable.safetensors")
        expected = {name for name, p in model.named_parameters() if p.requires_grad}
        if set(tensors) != expected:
            raise InvalidArgument(
                f"checkpoint {store.uri_for(prefix)} does not match this model's trainable weights "
                f"({len(set(tensors) ^ expected)} names differ): resume with the same method, LoRA shape "
                "and base model, or start a new run id"
            )
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in tensors.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
        _set_rng_state(torch.load(folder / "rng.pt", weights_only=False))
        return TrainerState(**json.loads((folder / "trainer_state.json").read_text()))


def save_best(
    store: ArtifactStore, run_prefix: str, model: Any, tokenizer: Any, step: int, val_loss: float
) -> None:
    """`best/`: the adapter (PEFT layout, loadable by any PEFT user) or the full model, with its score."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        with store.publish(f"{run_prefix}/best", overwrite=True) as pub:
            pub.put_dir(tmp)
            pub.manifest.update({"kind": "best", "step": step, "val_loss": val_loss})


def save_merged(
    store: ArtifactStore,
    run_prefix: str,
    spec: Any,
    factor: float,
    dtype: torch.dtype,
    lineage: dict[str, Any],
) -> str:
    """`merged/`: base weights + the best adapter, as one safetensors model a TGI-style server loads.

    The base is reloaded (not merged in place) so that a QLoRA run still merges into full-precision
    weights, and its config carries the Position Interpolation scaling.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from reviewstack.trainjob.rope import apply_position_interpolation

    with tempfile.TemporaryDirectory() as tmp:
        best, merged = Path(tmp) / "best", Path(tmp) / "merged"
        store.download_dir(f"{run_prefix}/best", best)
        config = AutoConfig.from_pretrained(spec.base_model, local_files_only=True)
        apply_position_interpolation(config, factor)
        if spec.method == "full":
            model = AutoModelForCausalLM.from_pretrained(best, dtype=dtype, local_files_only=True)
        else:
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(
                spec.base_model, config=config, dtype=dtype, local_files_only=True
            )
            model = PeftModel.from_pretrained(base, best).merge_and_unload()
        model.config.use_cache = True
        model.save_pretrained(merged, safe_serialization=True)
        AutoTokenizer.from_pretrained(best, local_files_only=True).save_pretrained(merged)
        prefix = f"{run_prefix}/merged"
        with store.publish(prefix, overwrite=True) as pub:
            pub.put_dir(merged)
            pub.manifest.update({"kind": "merged-model", **lineage})
    return prefix
