"""Choosing the next token for a batch of requests that each have their own parameters.

The order is TGI's: repetition penalty, then the refusal penalty (on the raw logit, so λ means the same
whatever the temperature), then temperature / top-k / top-p, then greedy or seeded sampling. Rows that
use a neutral value skip a stage, and one device→host copy a step brings back the chosen ids and their
log-probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from reviewstack.penalty.core import RowTracker
from reviewstack.penalty.torch_ops import lower_logits


@dataclass
class RowSampling:
    """One request's decoding parameters and state."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    refusal_penalty: float = 0.0
    top_n_tokens: int = 0
    seed: int | None = None
    tracker: RowTracker | None = None  # set when refusal_penalty > 0
    seen: list[int] = field(default_factory=list)  # prompt + generated ids, for the repetition penalty
    generator: torch.Generator | None = None


@dataclass(frozen=True)
class Choice:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # (id, logprob) of the most likely tokens, when asked for


def choose(logits: torch.Tensor, rows: Sequence[RowSampling]) -> list[Choice]:
    """Next token of each row of `logits` ([B, vocab], float32; modified in place)."""
    _repetition_penalty(logits, rows)
    penalised = [(i, r.tracker.penalised(), r.refusal_penalty) for i, r in enumerate(rows) if r.tracker]
    penalised = [p for p in penalised if p[1]]
    if penalised:
        lower_logits(logits, [p[0] for p in penalised], [p[1] for p in penalised], [p[2] for p in penalised])
    logprobs = logits.log_softmax(-1)
    chosen = logprobs.argmax(-1)
    sampled = [i for i, r in enumerate(rows) if r.do_sample]
    for i in sampled:
        chosen[i] = _sample(logits[i], rows[i])
    top_n = max((r.top_n_tokens for r in rows), default=0)
    picked = logprobs.gather(-1, chosen[:, None])[:, 0]
    host = torch.stack([chosen.double(), picked.double()]).tolist()  # the step's one synchronisation
    tops: list[list[tuple[int, float]]] = [[] for _ in rows]
    if top_n:
        values, ids = logprobs.topk(top_n, dim=-1)
        values, ids = values.tolist(), ids.tolist()
        tops = [list(zip(ids[i], values[i], strict=True))[: r.top_n_tokens] for i, r in enumerate(rows)]
    return [Choice(int(host[0][i]), host[1][i], tops[i]) for i in range(len(rows))]


def _repetition_penalty(logits: torch.Tensor, rows: Sequence[RowSampling]) -> None:
    for i, row in enumerate(rows):
        if row.repetition_penalty == 1.0 or not row.seen:
            continue
        ids = torch.tensor(sorted(set(row.seen)), device=logits.device)
        ids = ids[ids < logits.shape[-1]]
        values = logits[i, ids]
        logits[i, ids] = torch.where(
            values > 0, values / row.repetition_penalty, values * row.repetition_penalty
        )


def _sample(logits: torch.Tensor, row: RowSampling) -> torch.Tensor:
    scores = logits / row.temperature
    if row.top_k:
        kth = scores.topk(min(row.top_k, scores.shape[-1])).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if row.top_p < 1.0:
        ordered, order = scores.sort(descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) >= row.top_p  # keep the smallest set reaching top_p
        scores = scores.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    if row.generator is None:  # the engine gives every sampling request a seed, reported back
        row.generator = torch.Generator(device=logits.device)
        row.generator.manual_seed(row.seed or 0)
    return torch.multinomial(scores.softmax(-1), 1, generator=row.generator)[0]
