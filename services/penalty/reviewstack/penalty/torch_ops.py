"""Lowering logits for a batch: one indexed subtraction for all rows that need it."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def lower_logits(
    scores: torch.Tensor, rows: Sequence[int], token_ids: Sequence[Sequence[int]], amounts: Sequence[float]
) -> torch.Tensor:
    """scores[row, id] -= amount for each row and each of its ids (in place; returns `scores`).

    Ids past the end of the row (a tokenizer smaller than the model's padded vocabulary) are skipped.
    """
    vocab = scores.shape[-1]
    flat_rows: list[int] = []
    flat_ids: list[int] = []
    values: list[float] = []
    for row, ids, amount in zip(rows, token_ids, amounts, strict=True):
        kept = [i for i in ids if i < vocab]
        flat_rows += [row] * len(kept)
        flat_ids += kept
        values += [-amount] * len(kept)
    if flat_ids:
        index = torch.tensor([flat_rows, flat_ids], dtype=torch.long).to(scores.device, non_blocking=True)
        delta = torch.tensor(values, dtype=scores.dtype).to(scores.device, non_blocking=True)
        scores.index_put_((index[0], index[1]), delta, accumulate=True)
    return scores
