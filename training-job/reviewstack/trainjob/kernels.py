"""Speed-ups for the GPU training step that keep its maths: same loss, same gradients up to bf16 rounding.

Each switches itself off where it does not apply (CPU, fp32, a package not installed), so the CPU path
the tests take is the plain one. What each buys at 12,288 tokens on an 8B model is measured by
`bench/train_throughput.py` (docs/benchmarks.md):
- Liger's Triton kernels for RMSNorm, SwiGLU and RoPE: one pass over the activations where eager
  PyTorch makes several, and fewer tensors saved for the backward pass.
- LoRA in the compute dtype: PEFT keeps adapter weights in fp32 (right: Adam wants fp32 master
  weights) and by default casts each projection's input to fp32 before the adapter — at 12k tokens a
  copy of 200–700 MB per projection per pass, kept for the backward pass too. Under bf16 autocast with
  that cast off, the adapter matmuls read the bf16 activations while weights and gradients stay fp32.
- cuDNN attention first: on Hopper SDPA's cuDNN kernels run long causal attention faster than its
  FlashAttention-2 kernels; SDPA still falls back to the next backend for a shape cuDNN cannot run.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any

import torch

from reviewstack.common.errors import FailedPrecondition
from reviewstack.common.logging import get_logger

log = get_logger(__name__)


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def use_liger(requested: str, device: torch.device) -> bool:
    """liger=auto: when installed and on a GPU (Triton kernels); on: required; off: never."""
    if requested == "off":
        return False
    usable = liger_available() and device.type == "cuda"
    if requested == "on" and not usable:
        raise FailedPrecondition(
            "liger=on needs the liger-kernel package and a GPU: pip install 'reviewstack-trainjob[liger]', "
            "or use liger=auto"
        )
    return usable


def apply_liger(model: Any) -> bool:
    """Liger's RMSNorm, SwiGLU and RoPE kernels on a loaded (not yet PEFT-wrapped) model.

    The loss has its own fused path (loss.py), so Liger's cross-entropy patches stay off here.
    """
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = model.config.model_type
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        log.warning(
            "Liger has no kernels for this architecture; training without them", model_type=model_type
        )
        return False
    _apply_liger_kernel_to_instance(
        model=model,
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
    )
    return True


def lora_in_compute_dtype(model: Any) -> None:
    """Stop PEFT casting activations to the adapters' fp32 (needs the bf16 autocast of `step_context`)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False


@contextlib.contextmanager
def step_context(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Wrap forward *and* backward: gradient checkpointing re-runs forwards inside the backward pass."""
    if device.type != "cuda":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ]
    with contextlib.ExitStack() as stack:
        stack.enter_context(sdpa_kernel(order, set_priority=True))
        if dtype == torch.bfloat16:
            stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
        yield
