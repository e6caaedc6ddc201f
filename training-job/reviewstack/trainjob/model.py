"""Loading the base model for training: Position Interpolation in its config, the attention kernel,
the precision, gradient checkpointing, and the trainable part (LoRA, QLoRA or all weights)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from reviewstack.common.errors import FailedPrecondition, InvalidArgument
from reviewstack.common.logging import get_logger
from reviewstack.common.runspec import TrainSpec
from reviewstack.common.tokenizer import load_tokenizer
from reviewstack.trainjob import kernels
from reviewstack.trainjob.rope import apply_position_interpolation, interpolation_factor

log = get_logger(__name__)


def choose_attention(requested: str, device: torch.device) -> str:
    """flash_attention_2 when importable on a GPU, else SDPA (whose CUDA backend is FlashAttention-2)."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        return "flash_attention_2" if has_flash and device.type == "cuda" else "sdpa"
    if requested == "flash_attention_2" and not (has_flash and device.type == "cuda"):
        raise FailedPrecondition(
            "attention=flash_attention_2 needs the flash-attn package and a GPU; use attention=auto or sdpa"
        )
    return requested


def check_base_model(path: str) -> None:
    """A base model directory must hold a config, weights and a tokenizer, found before any training."""
    directory = Path(path)
    if not directory.is_dir():
        raise InvalidArgument(f"base model {path} is not a directory (give a local model directory)")
    missing = [
        what
        for what, patterns in (
            ("config.json", ["config.json"]),
            ("weights (*.safetensors or *.bin)", ["*.safetensors", "*.bin", "*.safetensors.index.json"]),
            ("tokenizer (tokenizer.json or tokenizer.model)", ["tokenizer.json", "tokenizer.model"]),
        )
        if not any(any(directory.glob(p)) for p in patterns)
    ]
    if missing:
        raise InvalidArgument(f"base model {path} has no {', '.join(missing)}")


def load_model(
    spec: TrainSpec, device: torch.device, dtype: torch.dtype, zero3: bool = False
) -> tuple[Any, float]:
    """The model ready to train, and the PI factor written into its config.

    `zero3`: the run's layout is one of DeepSpeed's; the caller holds a `HfDeepSpeedConfig` first, so
    `from_pretrained` partitions the weights across ranks as it loads them; such a model stays where
    DeepSpeed put it (no `.to`)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(spec.base_model, local_files_only=True)
    factor = interpolation_factor(config, spec.target_context, spec.pi_factor)
    apply_position_interpolation(config, factor)
    kwargs: dict[str, Any] = {
        "config": config,
        "dtype": dtype,
        "local_files_only": True,
        "attn_implementation": choose_attention(spec.attention, device),
    }
    if spec.method == "qlora":
        kwargs["quantization_config"] = _four_bit(dtype, device)
    model = AutoModelForCausalLM.from_pretrained(spec.base_model, **kwargs)
    if spec.method != "qlora" and not zero3:
        model.to(device)
    model.config.use_cache = False
    liger = kernels.use_liger(spec.liger, device) and kernels.apply_liger(model)
    if spec.gradient_checkpointing:
        _enable_checkpointing(model)
    if spec.method in ("lora", "qlora"):
        model = _with_lora(model, spec, zero3)
    if spec.method == "lora" and not zero3 and device.type == "cuda" and dtype == torch.bfloat16:
        kernels.lora_in_compute_dtype(model)
    log.info(
        "model loaded",
        base=spec.base_model,
        pi_factor=factor,
        attention=kwargs["attn_implementation"],
        liger=liger,
        trainable=trainable_parameters(model),
        dtype=str(dtype),
    )
    return model, factor


def _enable_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing, under the method's name in this transformers version
    (`activation_checkpointing_enable` in recent ones; GPU images often carry an older release)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _four_bit(dtype: torch.dtype, device: torch.device) -> Any:
    if importlib.util.find_spec("bitsandbytes") is None or device.type != "cuda":
        raise FailedPrecondition("method=qlora needs the bitsandbytes package and a GPU; use method=lora")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def _with_lora(model: Any, spec: TrainSpec, zero3: bool) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if spec.method == "qlora":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=spec.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in spec.lora.target_modules if m not in present]
    if missing:
        raise InvalidArgument(f"lora.target_modules {missing} are not modules of {spec.base_model}")
    lora = LoraConfig(
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=list(spec.lora.target_modules),
        trainable_token_indices=_token_indices(spec) or None,
        task_type="CAUSAL_LM",
    )
    # non-reentrant checkpointing reaches the adapters inside checkpointed blocks without an input that
    # requires grad (the reentrant kind needed `enable_input_require_grads`, a wasted backward into layer 0)
    # under ZeRO-3 the adapters take the base weights' dtype: DeepSpeed keeps fp32 master copies in its
    # optimizer and gathers weights in its own dtype (its forward runs without our autocast); elsewhere
    # PEFT's fp32 adapters are the master weights
    return get_peft_model(model, lora, autocast_adapter_dtype=not zero3)


def _token_indices(spec: TrainSpec) -> list[int]:
    """Each of `lora.trainable_tokens` as its one id in the base model's tokenizer. PEFT ties the rows
    it trains to a tied output layer too, so they move the tokens' logits as well as their inputs."""
    if not spec.lora.trainable_tokens:
        return []
    tokenizer = load_tokenizer(spec.base_model).tokenizer
    indices = set()
    for token in spec.lora.trainable_tokens:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise InvalidArgument(
                f"lora.trainable_tokens: {token!r} is {len(ids)} tokens of {spec.base_model}'s tokenizer, "
                "not one; name single tokens (such as the end-of-turn token)"
            )
        indices.add(ids[0])
    return sorted(indices)


_TOKEN_ROWS = "trainable_tokens_delta"  # PEFT's name for the rows trainable tokens train


def parameter_groups(model: Any, spec: TrainSpec) -> list[dict[str, Any]]:
    """The trainable weights as optimizer groups: the trainable token rows in a group of their own when
    `lora.trainable_tokens_learning_rate` gives them their own rate (the schedule scales both alike)."""
    rows_rate = spec.lora.trainable_tokens_learning_rate
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    rows = [p for name, p in trainable if _TOKEN_ROWS in name] if rows_rate is not None else []
    rest = [p for name, p in trainable if not (rows and _TOKEN_ROWS in name)]
    return [{"params": rest}] + ([{"params": rows, "lr": rows_rate}] if rows else [])


def trainable_parameters(model: Any) -> int:
    """Counted from the full shapes: a ZeRO-3 partitioned weight holds an empty tensor, its size in
    `ds_numel`."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
