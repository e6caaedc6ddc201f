"""The run's layout, chosen at its start from the memory model (common/train_memory.py), and its
prediction checked against the peak every GPU measured at the end.

Every rank must reach the same choice, or their collectives would not match: they plan from the same
spec, world size and model config, and the GPU memory they plan with is the smallest of all ranks'."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from reviewstack.common.logging import get_logger
from reviewstack.common.runspec import Layout, TrainSpec
from reviewstack.common.store import ArtifactStore
from reviewstack.common.train_memory import GIB, LayoutPlan, ModelShape, Topology, plan
from reviewstack.trainjob.kernels import use_liger

log = get_logger(__name__)
RECORD = "layout.json"  # in the run folder: the plan, then the measured peaks beside it
UNDERESTIMATE = 1.05  # a measured peak this far above the prediction is logged as a warning


def topology(device: torch.device, world_size: int) -> Topology:
    """The processes torchrun started and the smallest GPU among them (all ranks must call it)."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if device.type != "cuda":
        return Topology(world_size, per_node, None)
    memory = torch.tensor(
        [torch.cuda.get_device_properties(device).total_memory], dtype=torch.float64, device=device
    )
    if world_size > 1:
        torch.distributed.all_reduce(memory, op=torch.distributed.ReduceOp.MIN)
    return Topology(world_size, per_node, float(memory.item()) / GIB)


def choose(
    spec: TrainSpec,
    config: dict[str, Any],
    device: torch.device,
    world_size: int,
    resume_layout: Layout | None,
) -> LayoutPlan:
    """The plan for this run: every layout's predicted peak per GPU and the layout taken."""
    chosen = plan(
        ModelShape.from_config(config, f"{spec.base_model}/config.json"),
        spec,
        topology(device, world_size),
        liger=use_liger(spec.liger, device),
        resume_layout=resume_layout,
    )
    prediction = chosen.chosen_prediction
    if os.environ.get("RANK", "0") != "0":
        return chosen  # every rank reaches the same plan: one of them logs it
    log.info(
        "layout",
        requested=spec.layout,
        chosen=chosen.chosen,
        predicted_peak_gib=round(prediction.total, 1) if prediction else None,
        usable_gib=None if chosen.topology.usable_gib is None else round(chosen.topology.usable_gib, 1),
        processes=world_size,
    )
    for note in chosen.notes:
        log.warning("layout", note=note)
    return chosen


def write_plan(
    store: ArtifactStore, run_prefix: str, chosen: LayoutPlan, measured: dict[str, Any] | None = None
) -> None:
    record = {**chosen.as_dict(), **({"measured": measured} if measured else {})}
    store.put_bytes(f"{run_prefix}/{RECORD}", json.dumps(record, indent=2).encode() + b"\n")


def measured_peaks(device: torch.device, world_size: int) -> list[float] | None:
    """Each GPU's peak allocated memory (GiB) since the process started; every rank must call it.
    None on CPUs, where the process's memory says nothing about the model's."""
    if device.type != "cuda":
        return None
    peaks = torch.zeros(world_size, dtype=torch.float64, device=device)
    peaks[int(os.environ.get("RANK", "0"))] = torch.cuda.max_memory_allocated(device) / GIB
    if world_size > 1:
        torch.distributed.all_reduce(peaks)
    return [round(p, 2) for p in peaks.tolist()]


def check(chosen: LayoutPlan, peaks: list[float] | None) -> dict[str, Any] | None:
    """The measured peaks beside the prediction; a warning when the model fell short of the truth."""
    prediction = chosen.chosen_prediction
    if peaks is None or prediction is None:
        return None
    peak = max(peaks)
    result = {
        "peak_gib_per_gpu": peaks,
        "peak_gib": peak,
        "predicted_gib": round(prediction.total, 2),
        "error": round(peak / prediction.total - 1, 3),
    }
    if os.environ.get("RANK", "0") != "0":
        return result  # the same peaks on every rank: one of them logs them
    if peak > prediction.total * UNDERESTIMATE:
        log.warning(
            "the memory model underestimated this run: layout choices near the limit may not fit",
            layout=chosen.chosen,
            predicted_gib=result["predicted_gib"],
            peak_gib=peak,
        )
    else:
        log.info("peak memory", layout=chosen.chosen, predicted_gib=result["predicted_gib"], peak_gib=peak)
    return result
