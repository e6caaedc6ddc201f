"""DeepSpeed ZeRO-3 glue: the process group, the config, the engine, and gathering partitioned weights.

ZeRO-3 shards weights, gradients and optimizer state across ranks, so N GPUs hold one model copy between
them instead of N (plain DDP cannot fit 12k-token 8B training). The same code runs on GPUs with NCCL and
on CPUs with gloo (tests). Kept apart from the recipe so that a deepspeed=none run never imports
DeepSpeed.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from reviewstack.common.child_process import free_port
from reviewstack.common.errors import FailedPrecondition
from reviewstack.common.logging import get_logger
from reviewstack.common.runspec import Layout, TrainSpec

CONFIG_ENV = "REVIEWSTACK_DEEPSPEED_CONFIG"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "deepspeed" / "zero3.json"
log = get_logger(__name__)
PERSIST_ALL = 2**62  # a persistence threshold above every weight's size: all stay whole on every rank


def select_accelerator(device: torch.device) -> None:
    """Tell DeepSpeed which accelerator to use before anything imports it (it picks one, once, then)."""
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def init_distributed(device: torch.device) -> None:
    """Join the process group torchrun describes, or make a one-process group when run without it."""
    select_accelerator(device)
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    # torch 2.13 deprecates collectives DeepSpeed still calls: one warning per call, every step
    warnings.filterwarnings("ignore", r"`torch\.distributed\.\w+` is deprecated", FutureWarning)
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its INFO lines drown the run's own log
    # the shared-memory collective op is a C++ build of minutes on first use; gloo does the same job
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False)


def build_config(
    spec: TrainSpec,
    layout: Layout,
    accumulation: int,
    world_size: int,
    gpus_per_node: int,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """The DeepSpeed config file with its "auto" values filled in from the spec, the layout and the device.

    An explicit value that contradicts them is refused rather than silently winning: the spec is what
    the run records and reports. On GPUs the optimizer is torch's fused AdamW (one kernel for all
    adapters instead of a loop over them). The layouts differ in two settings only:
    - zero3-replicated: every weight persistent (never partitioned for use, only for the update), so no
      weight is all-gathered in forward or backward;
    - zero3-hpz: ZeRO++'s secondary partition of the weights across the GPUs of a node, which backward's
      all-gathers read instead of the primary one spread over all nodes."""
    path = Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    if not path.is_file():
        raise FailedPrecondition(
            f"no DeepSpeed config at {path}: set {CONFIG_ENV} to a ZeRO-3 JSON config (the repository's "
            "training-job/configs/deepspeed/zero3.json)"
        )
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise FailedPrecondition(f"DeepSpeed config {path} is not JSON: {exc}") from exc
    values = {
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": spec.micro_batch_size * accumulation * world_size,
        "gradient_clipping": spec.max_grad_norm,
        "bf16.enabled": dtype == torch.bfloat16,
        "optimizer.params.lr": spec.learning_rate,
        "optimizer.params.weight_decay": spec.weight_decay,
        "optimizer.params.fused": device.type == "cuda",
        "zero_optimization.stage3_param_persistence_threshold": PERSIST_ALL
        if layout == "zero3-replicated"
        else 0,
        "zero_optimization.zero_hpz_partition_size": gpus_per_node if layout == "zero3-hpz" else 1,
    }
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        if node.get(leaf, "auto") not in ("auto", value):
            raise FailedPrecondition(
                f"DeepSpeed config {path} sets {dotted}={node[leaf]!r} but the run needs {value!r}: "
                'write "auto" there and set it in the training spec'
            )
        node[leaf] = value
    if config.get("zero_optimization", {}).get("stage") != 3 or "auto" in json.dumps(config):
        raise FailedPrecondition(
            f'DeepSpeed config {path} must set zero_optimization.stage 3 and leave no other "auto" value'
        )
    return config


def hf_config(config: dict[str, Any]) -> Any:
    """Makes `from_pretrained` partition weights as it loads them (zero.Init). transformers keeps only a
    weak reference: the caller must hold the returned object for as long as the model lives."""
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(config)


def initialize(
    module: torch.nn.Module, config: dict[str, Any], scheduler: Callable[[Any], Any]
) -> tuple[Any, Any]:
    """The engine around `module` (whose forward returns the loss) and the LR scheduler it steps.

    The scheduler is built by `scheduler(optimizer)` on DeepSpeed's optimizer, so the schedule is the
    plain path's and its state goes into DeepSpeed's checkpoints."""
    import deepspeed

    _fetch_by_decoder_layer(module)
    trainable = [p for p in module.parameters() if p.requires_grad]
    engine, _, _, lr_scheduler = deepspeed.initialize(
        model=module, model_parameters=trainable, config=config, lr_scheduler=scheduler
    )
    return engine, lr_scheduler


def _fetch_by_decoder_layer(module: torch.nn.Module) -> None:
    """Make each decoder layer one unit of ZeRO-3's weight fetching.

    ZeRO-3 hooks every submodule to gather its weights before use and release them after. PEFT gives
    each projection six more submodules (~60 per decoder layer), and with gradient checkpointing every
    module runs three times a step (forward, recomputation, backward). On an 8B model at 12k tokens the
    hooks alone made a step ~1.4 s slower than without DeepSpeed (docs/benchmarks.md). As a "leaf", a
    layer is gathered once per pass, all its weights in one collective (~0.4 GB in bf16 for Llama-3-8B).
    """
    import deepspeed

    layers = [m for m in module.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    decoder_layers = max(layers, key=len, default=None)  # the decoder's stack of blocks
    if decoder_layers is not None:
        deepspeed.utils.set_z3_leaf_modules(module, [type(decoder_layers[0])])


def log_weight_placement(model: torch.nn.Module, layout: Layout) -> None:
    """How much of the model each rank holds whole, and whether a per-node shard exists: what the
    layout was meant to do, as DeepSpeed did it."""
    params = list(model.parameters())
    total = sum(p.ds_numel for p in params)
    whole = sum(p.ds_numel for p in params if getattr(p, "ds_persist", False))
    node_shards = sum(getattr(p, "ds_secondary_tensor", None) is not None for p in params)
    log.info(
        "weights placed",
        layout=layout,
        whole_on_every_rank=round(whole / max(total, 1), 4),
        with_node_shard=round(node_shards / max(len(params), 1), 4),
    )


def gathered_trainable_state(model: torch.nn.Module, rank: int) -> dict[str, torch.Tensor]:
    """Full CPU copies of the trainable weights on rank 0 (empty elsewhere); every rank must call it.

    One weight at a time, so that gathering a fully fine-tuned model never needs a whole model copy in
    GPU memory."""
    import deepspeed

    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            if rank == 0:
                state[name] = param.detach().cpu().clone()
    return state


def release() -> None:
    """Stop partitioning new models (a merge on rank 0 loads a whole one) and leave the process group."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
