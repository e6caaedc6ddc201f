"""Peak GPU memory of a training run in each layout, predicted before any weight is loaded, and the
layout `auto` picks: the fastest one whose prediction fits the GPUs.

Why a model and not a trial step: a run that does not fit fails minutes in (after loading 16-140 GB of
weights), on every rank, and a layout that fits with room to spare may be much slower than one that
would have fitted too (ZeRO-3 sharding costs 8 % a step on 2 GPUs against keeping the base whole,
docs/benchmarks.md). It lives in the common library so that `reviewstack train plan` answers on a
laptop what the training job decides at its start, from the same arithmetic.

The arithmetic is bookkeeping, not a fit: bytes per parameter of what each layout keeps (weights, the
trainable weights' gradients and AdamW state, DeepSpeed's partitions and the weights it gathers), and
per token the tensors one decoder layer keeps for its backward under activation checkpointing (layer
inputs, projections' outputs, LoRA's dropout copies and masks, the MLP's intermediates). The training
job measures its peak and sets it beside this prediction (docs/benchmarks.md has the comparison).

Layouts, fastest first:
- `single`: one process, plain PyTorch, no DeepSpeed (the trainer's fastest path on one GPU);
- `zero3-replicated`: DeepSpeed ZeRO-3 with every weight kept whole on every GPU (parameter persistence):
  no weight all-gathers in forward or backward; gradients and optimizer state still sharded. DeepSpeed
  keeps each rank's shard beside the whole weight, so weights cost (1 + 1/N) copies;
- `zero3-hpz`: ZeRO++ hierarchical partitioning: a second copy of the weights sharded within each node,
  so backward's all-gathers stay on the node's links. Faster than `zero3` only across nodes;
- `zero3`: every weight, gradient and optimizer state sharded across all GPUs: the least memory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from reviewstack.common.errors import FailedPrecondition, InvalidArgument
from reviewstack.common.runspec import Layout, TrainSpec

GIB = 2**30
# fastest first (docs/benchmarks.md: on 2 GPUs the base kept whole ran 1.95× one GPU, sharded 1.79×)
SPEED_ORDER: tuple[Layout, ...] = ("single", "zero3-replicated", "zero3-hpz", "zero3")
LAYOUTS: tuple[Layout, ...] = tuple(name for name in get_args(Layout) if name != "auto")
# what a prediction may use of a GPU: the allocator's fragmentation and cached blocks (a few %), the
# CUDA context and NCCL's buffers, which the allocator's peak does not count
FIT_FRACTION = 0.9
FIT_RESERVE_GIB = 1.0
# DeepSpeed settings the layouts' arithmetic reads (configs/deepspeed/zero3.json and DeepSpeed's defaults)
PREFETCH_BUCKET = 250_000_000  # stage3_prefetch_bucket_size: weights fetched ahead of use
MAX_LIVE_PARAMETERS = 1_000_000_000  # stage3_max_live_parameters
REDUCE_BUCKET = 500_000_000  # reduce_bucket_size: the gradient bucket
SUB_GROUP = 1_000_000_000  # sub_group_size: the fp32 gradients made at once for the update
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weights, an 8-bit scale per 64, fp32 per 256 scales


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-style decoder (Llama, Mistral, Qwen2, SmolLM …) that memory depends on."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "config.json") -> ModelShape:
        missing = [
            k
            for k in (
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "vocab_size",
            )
            if not isinstance(config.get(k), int) or config[k] <= 0
        ]
        if missing:
            raise InvalidArgument(
                f"{where} has no positive {', '.join(missing)}: the memory model knows Llama-style decoders "
                "(hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size)"
            )
        heads = config["num_attention_heads"]
        return cls(
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
            vocab=config["vocab_size"],
            tied=bool(config.get("tie_word_embeddings", False)),
        )

    @classmethod
    def from_model_dir(cls, path: str | Path) -> ModelShape:
        config = Path(path) / "config.json"
        if not config.is_file():
            raise InvalidArgument(
                f"no config.json in {path}: give the base model's directory, or its config.json with "
                "--model-config"
            )
        return cls.from_config(json.loads(config.read_text()), str(config))

    def projections(self) -> dict[str, tuple[int, int]]:
        """Each decoder layer's linear layers: name → (inputs, outputs)."""
        h, q, kv, i = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def layer_parameters(self) -> int:
        return sum(a * b for a, b in self.projections().values()) + 2 * self.hidden  # + two RMSNorms

    @property
    def embedding_parameters(self) -> int:
        return self.vocab * self.hidden

    @property
    def parameters(self) -> int:
        heads = 1 if self.tied else 2  # the input embedding and, untied, the output layer
        return self.layers * self.layer_parameters + heads * self.embedding_parameters + self.hidden

    @property
    def linear_parameters(self) -> int:
        """The decoder layers' projections: what QLoRA stores in 4 bits."""
        return self.layers * sum(a * b for a, b in self.projections().values())

    def lora_parameters(self, rank: int, targets: list[str]) -> int:
        dims = self.projections()
        return self.layers * sum(rank * (dims[t][0] + dims[t][1]) for t in targets if t in dims)


@dataclass(frozen=True)
class Topology:
    """Where the run's processes are: one per GPU (or CPU process), `gpus_per_node` of them on a node."""

    gpus: int
    gpus_per_node: int
    gpu_memory_gib: float | None = None  # None: unknown (a CPU run, or a plan without a card named)

    def __post_init__(self) -> None:
        if self.gpus < 1 or self.gpus_per_node < 1 or self.gpus % self.gpus_per_node:
            raise InvalidArgument(
                f"{self.gpus} GPUs cannot be spread as {self.gpus_per_node} per node: give a total that "
                "is a multiple of the GPUs per node"
            )

    @property
    def nodes(self) -> int:
        return self.gpus // self.gpus_per_node

    @property
    def usable_gib(self) -> float | None:
        if self.gpu_memory_gib is None:
            return None
        return FIT_FRACTION * self.gpu_memory_gib - FIT_RESERVE_GIB


@dataclass(frozen=True)
class Prediction:
    """Peak bytes per GPU of one layout, by part (GiB)."""

    layout: Layout
    weights: float
    trainable: float  # the trainable weights' own copies, gradients and optimizer state
    activations: float  # checkpointed layer inputs, one layer's recomputation, the loss's logits
    buffers: float  # weights gathered for use (ZeRO-3), gradient buckets

    @property
    def total(self) -> float:
        return self.weights + self.trainable + self.activations + self.buffers

    def as_dict(self) -> dict[str, Any]:
        parts = ("weights", "trainable", "activations", "buffers", "total")
        return {"layout": self.layout, **{f"{p}_gib": round(getattr(self, p), 2) for p in parts}}


@dataclass(frozen=True)
class LayoutPlan:
    """Every layout this run could take, its prediction, why it cannot be taken, and the one chosen."""

    topology: Topology
    predictions: dict[Layout, Prediction]
    unavailable: dict[Layout, str]  # layout → why it is not a choice here
    chosen: Layout | None
    requested: Layout | str = "auto"
    notes: list[str] = field(default_factory=list)

    @property
    def chosen_prediction(self) -> Prediction | None:
        return self.predictions.get(self.chosen) if self.chosen else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "chosen": self.chosen,
            "gpus": self.topology.gpus,
            "gpus_per_node": self.topology.gpus_per_node,
            "gpu_memory_gib": self.topology.gpu_memory_gib,
            "usable_gib": None if self.topology.usable_gib is None else round(self.topology.usable_gib, 2),
            "layouts": [
                {**p.as_dict(), "why_not": self.unavailable.get(name)} for name, p in self.predictions.items()
            ],
            "notes": self.notes,
        }

    def summary(self) -> str:
        """One line per layout, for an error message or a log."""
        lines = []
        for name, p in self.predictions.items():
            mark = "← chosen" if name == self.chosen else self.unavailable.get(name, "")
            lines.append(f"  {name:<17} {p.total:7.1f} GiB  {mark}")
        return "\n".join(lines)


def predict(
    shape: ModelShape, spec: TrainSpec, layout: Layout, topology: Topology, *, liger: bool
) -> Prediction:
    """Peak memory per GPU of `spec` run in `layout` on `topology` (GiB).

    `liger`: the single-process path's fused linear cross-entropy is in use (the logits are then made a
    chunk at a time); ZeRO-3 layouts compute the plain head on the response positions instead."""
    n = topology.gpus if layout != "single" else 1
    per_node = min(topology.gpus_per_node, n)
    w = 4 if spec.precision == "fp32" or spec.device == "cpu" else 2  # bytes of a weight and an activation
    base = shape.parameters
    lora = spec.method in ("lora", "qlora")
    adapters = shape.lora_parameters(spec.lora.r, spec.lora.target_modules) if lora else 0
    trainable = adapters if lora else base
    if spec.lora.trainable_tokens and lora:
        trainable += len(spec.lora.trainable_tokens) * shape.hidden
    gathered = fp32_grads = 0.0
    if layout == "single":
        if spec.method == "qlora":
            # 4-bit projections; PEFT's k-bit preparation casts the rest (embeddings, head, norms) to fp32
            weights = shape.linear_parameters * NF4_BYTES + (base - shape.linear_parameters) * 4
        else:
            weights = base * w
        # LoRA: fp32 adapters (PEFT's), their gradients and AdamW's two moments; full: every weight's
        # gradient and two moments in the weights' own dtype (torch's AdamW keeps them so)
        state = trainable * 16 if lora else trainable * 3 * w
        buffers = 0.0
    else:
        sharded = base + adapters  # under ZeRO-3 the adapters are weights like the others (bf16)
        if layout == "zero3-replicated":
            weights = sharded * w * (1 + 1 / n)  # whole, plus the rank's shard DeepSpeed keeps beside it
        elif layout == "zero3-hpz":
            weights = sharded * w * (1 / n + 1 / per_node)  # the shard, plus the node's secondary shard
        else:
            weights = sharded * w / n
        # the update's partitions: bf16 flat copy and gradient, fp32 master weights and two moments
        state = trainable * (2 * w + 12) / n
        buffers = min(trainable, REDUCE_BUCKET) * w  # the gradient bucket
        if layout != "zero3-replicated" and n > 1:
            # weights gathered for use: the largest fetch (a decoder layer is one, zero.py; or the
            # embedding) and what is prefetched behind it (one process uses its partition as it is)
            unit = max(shape.layer_parameters, shape.embedding_parameters)
            ahead = min(PREFETCH_BUCKET, shape.parameters - unit)
            gathered = min(unit + ahead, max(MAX_LIVE_PARAMETERS, unit)) * w
        # the update makes fp32 gradients of a sub-group at a time, once the activations are gone
        fp32_grads = min(trainable / n, SUB_GROUP) * 4
    activations = _activations(shape, spec, w, plain_loss=layout != "single" or not liger)
    if layout != "single" and fp32_grads > activations + gathered:  # the update is the peak
        return Prediction(layout, weights / GIB, state / GIB, 0.0, (buffers + fp32_grads) / GIB)
    return Prediction(layout, weights / GIB, state / GIB, activations / GIB, (buffers + gathered) / GIB)


def _activations(shape: ModelShape, spec: TrainSpec, w: int, *, plain_loss: bool) -> float:
    """Bytes live at the start of backward: every layer's checkpointed input, one layer's recomputed
    tensors with the gradients flowing through it, and the loss's logits over the response positions."""
    tokens = spec.micro_batch_size * (spec.max_prompt_length + spec.max_response_length)
    h, i = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    # QLoRA's fp32 embeddings make the residual stream fp32: the checkpointed inputs are too
    stream = 4 if spec.method == "qlora" else w
    # one layer, per token: two norms' outputs, q/k/v and their rotated copies, attention output, o's
    # output, two residual sums, gate/up/activation products, down's output
    layer = 2 * h + (q + 2 * kv) + (q + kv) + q + h + 2 * h + 3 * i + h
    if spec.method in ("lora", "qlora") and spec.lora.dropout > 0:
        # each adapted projection's dropout copy of its input and its one-byte mask (PEFT, per module)
        dims = shape.projections()
        layer += sum(dims[t][0] for t in spec.lora.target_modules if t in dims) * (1 + 0.5 * 2 / w)
    layer += 2 * i + h  # gradients of the MLP's two inputs and of the layer's output in backward
    if spec.gradient_checkpointing:
        kept = shape.layers * tokens * h * stream + tokens * layer * w
    else:
        kept = shape.layers * tokens * (layer * w + h * stream)
    responses = spec.micro_batch_size * spec.max_response_length
    # plain head: logits in the compute dtype, their fp32 copy for the loss and its gradient; Liger's
    # fused loss makes them a chunk of positions at a time (small beside the rest)
    logits = responses * shape.vocab * (w + 8) if plain_loss else 0
    return kept + logits


def plan(
    shape: ModelShape,
    spec: TrainSpec,
    topology: Topology,
    *,
    liger: bool,
    resume_layout: Layout | None = None,
    strict: bool = True,
) -> LayoutPlan:
    """Every layout's prediction on `topology`, and the layout the run takes: the spec's, or for `auto`
    the fastest that fits (a resumed run keeps the layout its checkpoint was written with).

    `strict`: raise FailedPrecondition when no layout can run (a plan for display returns chosen=None)."""
    predictions = {name: predict(shape, spec, name, topology, liger=liger) for name in SPEED_ORDER}
    cannot: dict[Layout, str] = {}  # would not run here at all
    passed_over: dict[Layout, str] = {}  # would run if asked for, but auto does not take it
    usable = topology.usable_gib
    for name, prediction in predictions.items():
        if name == "single" and topology.gpus > 1:
            cannot[name] = "one process only"
        elif name != "single" and (spec.method == "qlora" or spec.lora.trainable_tokens):
            cannot[name] = "qlora and trainable tokens run as one process"
        elif name == "zero3-hpz" and topology.nodes == 1:
            passed_over[name] = "one node: no faster than zero3"
        elif name == "zero3-hpz" and topology.gpus_per_node == 1:
            passed_over[name] = "one GPU per node: the same as zero3"
        elif usable is not None and prediction.total > usable:
            passed_over[name] = f"does not fit ({usable:.1f} GiB usable)"
    unavailable = {**cannot, **passed_over}
    notes: list[str] = []
    chosen: Layout | None
    if spec.layout != "auto":
        chosen = spec.layout
        if chosen in cannot:
            raise FailedPrecondition(
                f"layout={chosen} cannot run here: {cannot[chosen]} ({topology.gpus} processes); use "
                "layout=auto or another layout"
            )
        if chosen in passed_over:
            notes.append(f"layout={chosen} was asked for although {passed_over[chosen]}")
    elif resume_layout is not None and resume_layout not in cannot:
        chosen = resume_layout  # the same layout as before the restart, whatever GPUs it got now
        notes.append(f"resumed: kept {resume_layout}, the layout the checkpoint was written with")
    else:
        chosen = next((name for name in SPEED_ORDER if name not in unavailable), None)
    result = LayoutPlan(topology, predictions, unavailable, chosen, spec.layout, notes)
    if chosen is None and strict:
        if topology.gpus > 1 and (spec.method == "qlora" or spec.lora.trainable_tokens):
            raise FailedPrecondition(
                f"method={spec.method} with {topology.gpus} processes: QLoRA and lora.trainable_tokens run "
                "as one process (one GPU); start one process, or use method=lora without trainable tokens"
            )
        raise FailedPrecondition(
            f"no layout fits {topology.gpus} GPU(s) of {topology.gpu_memory_gib:.1f} GiB for this run "
            f"(predicted peak per GPU):\n{result.summary()}\nuse more GPUs, a shorter max_prompt_length, "
            "method=lora, or a smaller micro_batch_size (`reviewstack train plan` shows the parts)"
        )
    return result
