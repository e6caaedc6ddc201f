"""Checkpoints in the store: complete or absent, and enough to continue exactly where a run stopped.

A checkpoint (`runs/<id>/checkpoints/step-N/`) holds the trainable weights (LoRA adapter tensors, or all
weights for full fine-tuning), the optimizer and scheduler state, the RNG states and the data position.
It is a store publication, so its manifest is written last: a pod killed while uploading leaves a
folder that `latest_checkpoint` does not see, and the restarted run resumes from the one before.

Under DeepSpeed ZeRO-3 (`save_zero_checkpoint`) the weights and optimizer state are partitioned across
ranks, which may sit on different nodes: each rank uploads its own shard files (`zero/…`, `rng-rankR.pt`)
into rank 0's publication (as a participant of it) and rank 0 adopts them all and commits once every rank
is done. Such a checkpoint can only be resumed by the same number of processes.

Loading never runs code from the store: anyone who can write the bucket could otherwise put a pickle
with a payload in place of `optimizer.pt`. Every file is checked against the sha256 its manifest lists,
and `*.pt` files are read with `torch.load(weights_only=True)` (tensors and plain containers only), RNG
states being saved in such types; DeepSpeed's shards, which DeepSpeed itself unpickles without that
restriction, are first scanned and refused if they name anything but the few DeepSpeed classes its
checkpoints hold.
"""

from __future__ import annotations

import contextlib
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

from reviewstack.common.errors import FailedPrecondition, InvalidArgument
from reviewstack.common.runspec import Layout
from reviewstack.common.store import ArtifactStore

_STEP = re.compile(r"/step-(\d+)$")
_RANK_FILE = re.compile(r"(?:zero_pp_rank_|rng-rank)(\d+)[._]")  # a file only that rank reads back
ZERO3 = "deepspeed-zero3"  # manifest "format" of a sharded checkpoint; absent for a plain one
_ZERO_TAG = "state"


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
    """Every RNG's state in types a weights-only load accepts: python's is a tuple of ints, numpy's
    key array travels as a tensor (the ndarray itself would need numpy's unpickling helpers)."""
    algorithm, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {
        "algorithm": str(algorithm),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(gauss),
    }
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Any, where: str) -> None:
    try:
        numpy_state = state["numpy"]
        if isinstance(numpy_state, dict):  # else a checkpoint from before: numpy's own tuple
            numpy_state = (
                numpy_state["algorithm"],
                numpy_state["keys"].numpy().astype(np.uint32),
                numpy_state["pos"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        random.setstate(state["python"])
        np.random.set_state(numpy_state)
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise FailedPrecondition(
            f"{where} does not hold the RNG states this trainer writes ({type(exc).__name__}: {exc}); delete"
            " the checkpoint to resume from the one before it, or start a new run id"
        ) from exc


def _refused(store: ArtifactStore, prefix: str, name: str, why: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"{store.uri_for(f'{prefix}/{name}')} is not a file this trainer writes: {why}. Nothing in it was"
        " run. Someone or something with write access to the store may have altered it: delete the"
        f" checkpoint {store.uri_for(prefix)} to resume from the one before it, or start a new run id"
    )


def _load_state(
    store: ArtifactStore, prefix: str, folder: Path, name: str, allow: list[Any] | None = None
) -> Any:
    """`torch.load` that can only build tensors and plain containers (plus exactly `allow`)."""
    with torch.serialization.safe_globals(allow or []):
        try:
            return torch.load(folder / name, weights_only=True)
        except Exception as exc:  # any failure: the file is unusable, and nothing in it may run
            why = _unsafe_globals(folder / name) or _unpickler_reason(exc)
    raise _refused(store, prefix, name, f"a weights-only load refuses it ({why})")


def _unsafe_globals(path: Path) -> str:
    """What a checkpoint file would import beyond what may be loaded, for the message (best effort)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return ""
    return f"it would import {', '.join(sorted(found))}" if found else ""


def _unpickler_reason(exc: Exception) -> str:
    """torch's message is a page of advice to load with weights_only=False; keep only what was wrong."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    after = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith("WeightsUnpickler error:")]
    return (after or lines or [type(exc).__name__])[0]


def _load_rng(store: ArtifactStore, prefix: str, folder: Path, name: str) -> None:
    """RNG states, also from checkpoints written before they were saved as tensors: those hold numpy's
    key array, so exactly what rebuilds a uint32 ndarray is allowed for them."""
    legacy = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]
    _set_rng_state(_load_state(store, prefix, folder, name, legacy), store.uri_for(f"{prefix}/{name}"))


# What DeepSpeed 0.19's ZeRO-3 checkpoint files name besides what torch's weights-only load allows anyway.
_DEEPSPEED_GLOBALS = {
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
}


def _screen_deepspeed_files(store: ArtifactStore, prefix: str, folder: Path) -> None:
    """DeepSpeed's `load_checkpoint` unpickles its shards with `weights_only=False`. Before handing them
    over, read every pickle's instructions without running any (torch's static scan, which fails on any
    instruction a weights-only load does not know) and refuse a file that names anything else than
    torch's weights-only set and DeepSpeed's own few plain classes: unpickling such a file then runs
    nothing else either."""
    for path in sorted((folder / "zero").rglob("*.pt")):
        name = path.relative_to(folder).as_posix()
        try:
            unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - _DEEPSPEED_GLOBALS
        except Exception as exc:
            raise _refused(store, prefix, name, f"it is not a plain torch.save file ({exc})") from None
        if unsafe:
            raise _refused(store, prefix, name, f"it would import {', '.join(sorted(unsafe))}")


def _download_listed(
    store: ArtifactStore, prefix: str, folder: Path, manifest: dict[str, Any], rank: int | None = None
) -> None:
    """Fetch what the manifest lists (only this rank's shards when `rank` is given), each checked against
    the sha256 listed there: a file replaced after publication, even through the store, is refused."""
    for name, entry in manifest.get("files", {}).items():
        match = _RANK_FILE.search(name.rsplit("/", 1)[-1])
        if rank is not None and match is not None and int(match.group(1)) != rank:
            continue
        ref = store.download(f"{prefix}/{name}", folder / name)
        if ref.sha256 != (entry.get("sha256") if isinstance(entry, dict) else None):
            raise _refused(store, prefix, name, f"its sha256 {ref.sha256} is not the one its manifest lists")


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


def check_resumable(store: ArtifactStore, prefix: str, layout: str, world_size: int) -> None:
    """Refuse, before any model is loaded, a checkpoint whose optimizer state this run cannot take: a
    plain one fits only a single process, a ZeRO-3 one (any of its layouts: they shard the optimizer
    state alike) only the same number of processes."""
    written = _kind(checkpoint_layout(store, prefix), store.read_manifest(prefix).get("world_size"))
    now = _kind(layout, world_size)
    if written != now:
        raise FailedPrecondition(
            f"checkpoint {store.uri_for(prefix)} was written by {written} and this run has {now}: "
            f"resume with {written} (torchrun --nproc-per-node sets the processes), or start a new run id"
        )


def checkpoint_layout(store: ArtifactStore, prefix: str) -> Layout:
    """The layout that wrote a checkpoint (those written before layouts were recorded: by their format)."""
    manifest = store.read_manifest(prefix)
    zero3 = manifest.get("format") == ZERO3
    recorded = manifest.get("layout")
    if zero3 and recorded in ("zero3", "zero3-replicated", "zero3-hpz"):
        return recorded
    return "zero3" if zero3 else "single"


def _kind(layout: str, world_size: Any) -> str:
    if layout == "single":
        return "layout single"
    return f"a zero3 layout with {world_size} process{'' if world_size == 1 else 'es'}"


def trainable_shapes(model: Any) -> dict[str, list[int]]:
    """Name → full shape of each trainable weight (a ZeRO-3 partitioned one keeps it in `ds_shape`)."""
    return {
        name: list(getattr(p, "ds_shape", p.shape)) for name, p in model.named_parameters() if p.requires_grad
    }


def _check_trainable(store: ArtifactStore, prefix: str, saved: dict[str, list[int]], model: Any) -> None:
    expected = trainable_shapes(model)
    if saved != expected:
        differ = {n for n in saved.keys() | expected.keys() if saved.get(n) != expected.get(n)}
        raise InvalidArgument(
            f"checkpoint {store.uri_for(prefix)} does not match this model's trainable weights "
            f"({len(differ)} differ in name or shape): resume with the same method, LoRA shape "
            "and base model, or start a new run id"
        )


def load_checkpoint(
    store: ArtifactStore, prefix: str, model: Any, optimizer: Any, scheduler: Any
) -> TrainerState:
    manifest = store.read_manifest(prefix)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _download_listed(store, prefix, folder, manifest)
        tensors = load_file(folder / "trainable.safetensors")
        _check_trainable(store, prefix, {n: list(t.shape) for n, t in tensors.items()}, model)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in tensors.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))
        optimizer_state = _load_state(store, prefix, folder, "optimizer.pt")
        scheduler_state = _load_state(store, prefix, folder, "scheduler.pt")
        _load_rng(store, prefix, folder, "rng.pt")
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
        return TrainerState(**json.loads((folder / "trainer_state.json").read_text()))


def save_zero_checkpoint(
    store: ArtifactStore,
    run_prefix: str,
    engine: Any,
    model: Any,
    state: TrainerState,
    rank: int,
    world: int,
    layout: Layout,
) -> str:
    """A ZeRO-3 checkpoint; every rank must call it. Each rank uploads the shards it wrote itself (ranks
    may be on different nodes), then rank 0 lists them all in the manifest it writes last.

    The trainable weights live in the shards (fp32 master copies; `zero/zero_to_fp32.py` rebuilds them
    offline); `trainable.json` names them so that a resume with another model is refused clearly."""
    import torch.distributed as dist

    prefix = f"{run_prefix}/checkpoints/step-{state.step}"
    with contextlib.ExitStack() as stack:
        pub = stack.enter_context(store.publish(prefix, overwrite=True)) if rank == 0 else None
        writer = [pub.writer_id if pub is not None else None]
        dist.broadcast_object_list(writer, src=0)  # the other ranks write into rank 0's publication
        target = pub if pub is not None else store.join_publication(prefix, str(writer[0]))
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        # frozen weights are the base model, reloaded from base_model on resume: not saved per rank
        engine.save_checkpoint(str(folder / "zero"), tag=_ZERO_TAG, exclude_frozen_parameters=True)
        torch.save(_rng_state(), folder / f"rng-rank{rank}.pt")
        mine = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
        for name in mine:
            target.put_file(name, folder / name)
        theirs: list[list[str] | None] = [None] * world
        dist.gather_object(mine, theirs if rank == 0 else None, dst=0)
        if pub is not None:
            for name in (n for names in theirs[1:] for n in names or []):
                pub.adopt(name)  # written by its own rank; two ranks writing one name is refused
            pub.put_bytes("trainable.json", json.dumps(trainable_shapes(model), indent=1).encode())
            pub.put_bytes("trainer_state.json", json.dumps(state.to_json(), indent=2).encode())
            pub.manifest.update(
                {
                    "kind": "checkpoint",
                    "step": state.step,
                    "format": ZERO3,
                    "world_size": world,
                    "layout": layout,
                }
            )
    dist.barrier()  # the manifest is written: every rank may rely on this checkpoint from here on
    return prefix


def load_zero_checkpoint(
    store: ArtifactStore, prefix: str, engine: Any, model: Any, rank: int
) -> TrainerState:
    """Restore a ZeRO-3 checkpoint into a fresh engine; every rank fetches only its own shards."""
    manifest = store.read_manifest(prefix)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _download_listed(store, prefix, folder, manifest, rank)
        _check_trainable(store, prefix, json.loads((folder / "trainable.json").read_text()), model)
        _screen_deepspeed_files(store, prefix, folder)
        # frozen weights were not saved (see save_zero_checkpoint): only the trainable ones must match
        loaded, _ = engine.load_checkpoint(str(folder / "zero"), tag=_ZERO_TAG, load_module_strict=False)
        if loaded is None:
            raise FailedPrecondition(
                f"DeepSpeed found no checkpoint in {store.uri_for(prefix)}; start a new run id"
            )
        _load_rng(store, prefix, folder, f"rng-rank{rank}.pt")
        return TrainerState(**json.loads((folder / "trainer_state.json").read_text()))


def save_best(
    store: ArtifactStore,
    run_prefix: str,
    model: Any,
    tokenizer: Any,
    step: int,
    val_loss: float,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """`best/`: the adapter (PEFT layout, loadable by any PEFT user) or the full model, with its score.

    `state_dict` gives the weights when the model's own are partitioned (ZeRO-3)."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
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
    with tempfile.TemporaryDirectory() as tmp:
        best, merged = Path(tmp) / "best", Path(tmp) / "merged"
        store.download_dir(f"{run_prefix}/best", best)
        merge_model(spec.base_model, best, merged, factor, dtype, full=spec.method == "full")
        prefix = f"{run_prefix}/merged"
        with store.publish(prefix, overwrite=True) as pub:
            pub.put_dir(merged)
            pub.manifest.update({"kind": "merged-model", **lineage})
    return prefix


def merge_model(
    base_model: str | Path, best: Path, out: Path, factor: float, dtype: torch.dtype, *, full: bool = False
) -> Path:
    """Write into `out` the model `best` holds (a LoRA adapter over `base_model`, or full weights) with
    `factor` as its linear RoPE scaling: what a server loads. Shared by the end of a run and by
    `reviewstack-merge`, which merges a shipped adapter onto the packaged base."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from reviewstack.trainjob.rope import apply_position_interpolation

    config = AutoConfig.from_pretrained(base_model, local_files_only=True)
    apply_position_interpolation(config, factor)
    if full:
        model = AutoModelForCausalLM.from_pretrained(best, dtype=dtype, local_files_only=True)
    else:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(
            base_model, config=config, dtype=dtype, local_files_only=True
        )
        model = PeftModel.from_pretrained(base, best).merge_and_unload()
    model.config.use_cache = True
    model.save_pretrained(out, safe_serialization=True)
    tokenizer_dir = best if (best / "tokenizer_config.json").is_file() else base_model
    AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True).save_pretrained(out)
    return out
