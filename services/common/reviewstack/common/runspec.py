"""The training run spec: the contract between whoever starts a run (the Training service, kubectl, the
CLI) and the training job that executes it.

It lives here, not in the job, so that the controller can validate a spec and build a Job from it
without importing the trainer; so does its reader (`load_train_spec`: a file or store object, `a.b=v`
overrides, one-line errors), which the job, the `reviewstack train` verbs and the experiment runner all
use, so a spec means the same thing to each of them.

Defaults are the method's reference hyper-parameters (effective batch 16, lr 1e-4, 3 epochs, save every
100 steps) and its context extension (Llama-3 8k → 12k by Position Interpolation, factor 1.5).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reviewstack.common.errors import InvalidArgument, NotFound
from reviewstack.common.prompt import MAX_PROMPT_LENGTH, MAX_RESPONSE_LENGTH

if TYPE_CHECKING:
    from reviewstack.common.settings import StoreSettings

_RUN_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # a DNS label: it names Kubernetes objects
MAX_EFFECTIVE_BATCH = 4096
MAX_MICRO_BATCH = 256
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# how the processes of a run share the model (train_memory.py predicts each one's memory)
Layout = Literal["auto", "single", "zero3", "zero3-replicated", "zero3-hpz"]


def check_run_id(value: str) -> str:
    """`value` if it can name a run (a DNS label: it names its Job and its runs/<id>/ folder)."""
    if not _RUN_ID.match(value):
        raise ValueError("use lower-case letters, digits and '-' (at most 63, start and end alphanumeric)")
    return value


class LoraSpec(BaseModel):
    """LoRA adapter shape (used by `lora` and `qlora`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN passes every bound

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] = Field(list(ALL_PROJECTIONS), min_length=1, description="modules to adapt")
    trainable_tokens: list[str] = Field(
        [],
        max_length=64,
        description="tokens whose embedding rows train too (PEFT's trainable tokens), each one token of the "
        "base's tokenizer, e.g. its end-of-turn token: with tied embeddings the rows are also those tokens' "
        "output weights, which adapters on the projections cannot reach",
    )
    trainable_tokens_learning_rate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="peak learning rate of those rows (default: the run's): an adapter's rate moves a "
        "row as far in a few steps as the row's own size, full fine-tuning's rate does not",
    )


class TrainSpec(BaseModel):
    """Everything a training run needs; unknown keys are refused so a misspelt knob never goes unseen."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN passes every bound

    run_id: str = Field(description="run id (a DNS label); reusing one resumes that run")
    dataset: str = Field(description="dataset folder URI: <store>/datasets/<name>/<version>")
    base_model: str = Field(description="base model directory (config, weights, tokenizer)")
    output: str = Field(description="store URI the run writes runs/<run-id>/ into")
    method: Literal["lora", "qlora", "full"] = Field("lora", description="what is trained")
    lora: LoraSpec = Field(default_factory=LoraSpec)
    # context extension (Position Interpolation)
    target_context: int = Field(12_288, ge=128, description="context the model is extended to, in tokens")
    pi_factor: float | None = Field(
        None, description="linear RoPE scaling factor; default target_context / the model's own context"
    )
    max_prompt_length: int = Field(MAX_PROMPT_LENGTH, ge=64, description="prompt tokens kept")
    max_response_length: int = Field(MAX_RESPONSE_LENGTH, ge=16, description="response tokens kept")
    # optimisation
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    learning_rate: float = Field(1e-4, gt=0)
    # bounded so that a typo (16000 for 16) is refused here, not found as an out-of-memory pod later
    effective_batch_size: int = Field(
        16, ge=1, le=MAX_EFFECTIVE_BATCH, description="sequences per optimizer step, all ranks"
    )
    micro_batch_size: int = Field(1, ge=1, le=MAX_MICRO_BATCH, description="sequences per forward pass")
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    save_steps: int = Field(100, ge=1, description="checkpoint every N optimizer steps")
    eval_steps: int = Field(100, ge=1, description="validation loss every N optimizer steps")
    logging_steps: int = Field(1, ge=1)
    max_eval_examples: int | None = Field(None, ge=1, description="cap on validation records")
    seed: int = 0
    # execution
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="cuda refuses to start without a GPU")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    attention: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="auto: flash_attention_2 when importable, else SDPA"
    )
    gradient_checkpointing: bool = True
    layout: Layout = Field(
        "auto",
        description="how the processes share the model: auto (the fastest layout whose predicted peak "
        "fits the GPUs: single on one, else zero3-replicated, zero3-hpz across nodes, zero3), single (one "
        "process, no DeepSpeed), zero3 (DeepSpeed ZeRO-3: everything sharded), zero3-replicated (ZeRO-3 "
        "with the weights whole on every GPU), zero3-hpz (ZeRO++: a second weight shard per node)",
    )
    liger: Literal["auto", "on", "off"] = Field("auto", description="Liger kernels when installed")
    merge: bool = Field(True, description="write merged/ (full weights) at the end")

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, value: str) -> str:
        return check_run_id(value)

    @field_validator("pi_factor")
    @classmethod
    def _pi(cls, value: float | None) -> float | None:
        if value is not None and value < 1.0:
            raise ValueError(
                f"a Position Interpolation factor below 1 ({value}) would compress positions the model "
                "knows; use ≥ 1 (1 = no extension)"
            )
        return value

    @model_validator(mode="after")
    def _lengths(self) -> TrainSpec:
        if self.max_prompt_length + self.max_response_length > self.target_context:
            raise ValueError(
                f"max_prompt_length + max_response_length ({self.max_prompt_length} + "
                f"{self.max_response_length}) exceed target_context {self.target_context}"
            )
        if self.effective_batch_size % self.micro_batch_size:
            raise ValueError("effective_batch_size must be a multiple of micro_batch_size")
        if self.lora.trainable_tokens and (self.method == "full" or self.layout.startswith("zero3")):
            raise ValueError(
                "lora.trainable_tokens trains embedding rows beside a LoRA adapter: not with method full "
                "(every row trains) nor a zero3 layout (partitioned embeddings); leave it empty there"
            )
        if self.method == "qlora" and self.layout.startswith("zero3"):
            raise ValueError(
                "method=qlora runs as one process (layout single or auto): 4-bit weights are not "
                "partitioned by DeepSpeed here; use method=lora for a zero3 layout"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _legacy_deepspeed(cls, data: Any) -> Any:
        """Specs (and the spec.json of runs) written before `layout` said `deepspeed: none|zero3`."""
        if isinstance(data, dict) and "deepspeed" in data:
            data = dict(data)
            legacy = data.pop("deepspeed")
            if "layout" in data:
                raise ValueError("deepspeed was replaced by layout: give layout only")
            if legacy not in ("none", "zero3"):
                raise ValueError(f"deepspeed={legacy!r}: it is now layout (single, zero3, … or auto)")
            data["layout"] = "single" if legacy == "none" else "zero3"
        return data


def read_spec_source(source: str, settings: StoreSettings | None = None) -> dict[str, Any]:
    """The mapping in a JSON/YAML file or in a store object (`s3://bucket/.../spec.json`)."""
    if "://" in source and not source.startswith("file://"):
        from reviewstack.common.store import open_store

        parent, _, name = source.rstrip("/").rpartition("/")
        text = open_store(parent, settings).get_bytes(name).decode()  # NotFound names the URI
    else:
        path = Path(source.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise NotFound(f"spec file {path} does not exist; pass a JSON/YAML file or a store URI")
        text = path.read_text()
    try:
        data = yaml.safe_load(text)  # JSON is YAML: one parser for both
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"spec {source} is neither JSON nor YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidArgument(f"spec {source} must hold a mapping of settings, not a {type(data).__name__}")
    return data


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["a.b=8", "c=[x]"]` as `{"a.b": 8, "c": ["x"]}`: values are YAML scalars, else the text as it is."""
    values: dict[str, Any] = {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise InvalidArgument(f"override {override!r} is not key=value (nested keys: lora.r=8)")
        try:
            values[key] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            values[key] = raw
    return values


def with_values(data: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `data` with each dotted key of `values` set (`lora.r` reaches into `lora`)."""
    result = copy.deepcopy(dict(data))
    for key, value in values.items():
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InvalidArgument(f"{key}: {part!r} is a value, not a group of settings")
            node = child
        node[leaf] = value
    return result


def validate_train_spec(data: Mapping[str, Any], where: str = "run spec") -> TrainSpec:
    """A TrainSpec, or InvalidArgument naming every bad field on one line (`invalid <where>: …`)."""
    try:
        return TrainSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise InvalidArgument(f"invalid {where}: {problems}") from None


def read_with_overrides(
    source: str, overrides: list[str], settings: StoreSettings | None = None
) -> dict[str, Any]:
    """The settings in `source` with `key=value` overrides applied, not yet validated."""
    return with_values(read_spec_source(source, settings), parse_overrides(overrides))


def load_train_spec(source: str, overrides: list[str], settings: StoreSettings | None = None) -> TrainSpec:
    """Read `source`, apply `key=value` overrides and validate: what the training job runs."""
    return validate_train_spec(read_with_overrides(source, overrides, settings))
