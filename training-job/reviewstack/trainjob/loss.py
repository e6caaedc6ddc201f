"""Loss on the response only, with logits computed only where there are labels.

At 12k tokens and a 128k vocabulary the full logits tensor is the largest activation of the whole step
(12,288 × 128,256 × 4 bytes ≈ 6.3 GB in fp32, before its gradient). A review's response is ~1k tokens, so
projecting only the hidden states at labelled positions cuts that by ~10×; with Liger's fused
linear + cross-entropy the logits are never materialised at all.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from reviewstack.trainjob.data import IGNORE_INDEX


def split_causal_lm(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(backbone, lm_head) of a causal LM, through a PEFT wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


class ResponseLoss:
    """Summed cross-entropy over labelled positions, and how many there were.

    Returning the sum (not the mean) lets the caller normalise by the tokens of the whole accumulated
    batch, so a long response weighs as much per token as a short one.
    """

    def __init__(self, use_liger: bool = False) -> None:
        self.use_liger = use_liger
        if use_liger:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            self._fused = LigerFusedLinearCrossEntropyLoss(reduction="sum")

    def __call__(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        backbone, head = split_causal_lm(model)
        # no mask when nothing is padded (always at micro-batch 1): some transformers versions then build
        # a dense [T, T] mask, which rules out SDPA's flash and cuDNN kernels (at 12k tokens: out of memory)
        mask = batch["attention_mask"]
        hidden = backbone(
            input_ids=batch["input_ids"], attention_mask=None if bool(mask.all()) else mask, use_cache=False
        ).last_hidden_state  # [B, T, H]
        targets = batch["labels"][:, 1:]  # position t predicts token t+1
        keep = targets != IGNORE_INDEX
        selected = hidden[:, :-1][keep]  # [N, H]
        labels = targets[keep]  # [N]
        if self.use_liger:
            loss = self._fused(head.weight, selected, labels)
        else:
            logits = head(selected).float()  # [N, V]: only the response positions
            loss = F.cross_entropy(logits, labels, reduction="sum")
        return loss, int(labels.numel())


class ResponseLossModel(torch.nn.Module):
    """The causal LM with `ResponseLoss` as its forward: `(input_ids, attention_mask, labels)` →
    (summed loss, labelled positions).

    A module rather than a function because DeepSpeed ZeRO-3 keeps each weight partitioned across ranks
    and gathers it through module hooks, which it resets at the top-level forward of the module it wraps;
    the loss must therefore run inside that forward (`engine(**batch)`). The plain path calls the same
    module, so both compute the loss identically.
    """

    def __init__(self, model: torch.nn.Module, loss: ResponseLoss) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        return self.loss(
            self.model, {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        )
