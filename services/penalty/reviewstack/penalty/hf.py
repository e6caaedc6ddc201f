"""The refusal penalty as a transformers `LogitsProcessor`, for `model.generate(...)`.

    processor = RefusalPenaltyLogitsProcessor.from_tokenizer(tokenizer, penalty=2.0)
    model.generate(**inputs, logits_processor=LogitsProcessorList([processor]))

Runs after generate's own processors and before temperature / top-k / top-p, so λ comes off the raw
logit. One processor serves one `generate` call: it learns the prompt length on its first call. For
greedy search and sampling (one row per sequence); beam search reorders rows, which it does not follow.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor

from reviewstack.penalty.core import PenaltyTable, RowTracker
from reviewstack.penalty.surfaces import token_surfaces
from reviewstack.penalty.torch_ops import lower_logits


class RefusalPenaltyLogitsProcessor(LogitsProcessor):
    """Lowers by `penalty` the logits of tokens that would continue a refusal at an aspect body's start;
    `penalty` 0 leaves the scores untouched."""

    def __init__(self, table: PenaltyTable, penalty: float) -> None:
        if penalty < 0:
            raise ValueError(f"the refusal penalty must be >= 0, got {penalty}")
        self.table = table
        self.penalty = float(penalty)
        self._trackers: list[RowTracker] | None = None
        self._seen = 0  # length of input_ids at the previous call

    @classmethod
    def from_tokenizer(
        cls, tokenizer: Any, penalty: float, **table_options: Any
    ) -> RefusalPenaltyLogitsProcessor:
        return cls(PenaltyTable(token_surfaces(tokenizer), **table_options), penalty)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.penalty == 0:
            return scores
        if self._trackers is None or len(self._trackers) != input_ids.shape[0]:
            self._trackers = [RowTracker(self.table) for _ in range(input_ids.shape[0])]
            self._seen = input_ids.shape[1]  # the prompt: nothing generated yet
        new = input_ids[:, self._seen :].tolist()
        self._seen = input_ids.shape[1]
        rows, ids = [], []
        for row, (tracker, tokens) in enumerate(zip(self._trackers, new, strict=True)):
            for token in tokens:
                tracker.advance(token)
            penalised = tracker.penalised()
            if penalised:
                rows.append(row)
                ids.append(penalised)
        return lower_logits(scores, rows, ids, [self.penalty] * len(rows))
