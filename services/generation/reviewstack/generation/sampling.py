"""Choosing the next token for a batch of requests that each have their own parameters.

The order is TGI's: repetition penalty, then the refusal penalty (on the raw logit, so λ means the same
whatever the temperature), then temperature / top-k / top-p, then greedy or seeded sampling. Rows that
use a neutral value skip a stage, and one device→host copy a step brings back the chosen ids and their
log-probabilities.

Every parameter that passed validation must give a distribution, whatever its size: temperature scales
logits from which the row's maximum was subtracted (the best token scores 0, so a temperature of 1e-300
gives an argmax, not inf/inf = NaN), and a repetition penalty's result is kept within float32. A row
that still fails (or whose logits the model made non-finite) fails alone: `choose` returns the exception in
its place and the other rows of the step keep their tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from reviewstack.penalty.core import RowTracker
from reviewstack.penalty.torch_ops import lower_logits

FLOAT32_MAX = torch.finfo(torch.float32).max
FLOAT32_TINY = torch.finfo(torch.float32).tiny


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


class RowFailed(RuntimeError):
    """One row of a step could not be sampled: its request fails, the others go on."""


def choose(logits: torch.Tensor, rows: Sequence[RowSampling]) -> list[Choice | RowFailed]:
    """Next token of each row of `logits` ([B, vocab], float32; modified in place), or why that row has
    none. An error of a stage that works on the whole batch at once is raised: it belongs to no one row."""
    failed: dict[int, RowFailed] = {}
    _per_row(rows, failed, "the repetition penalty", lambda i, row: _repetition_penalty(logits, i, row))
    penalised = [(i, r.tracker.penalised(), r.refusal_penalty) for i, r in enumerate(rows) if r.tracker]
    penalised = [p for p in penalised if p[1]]
    if penalised:
        lower_logits(logits, [p[0] for p in penalised], [p[1] for p in penalised], [p[2] for p in penalised])
    logprobs = logits.log_softmax(-1)
    chosen = logprobs.argmax(-1)

    def sample(i: int, row: RowSampling) -> None:
        if row.do_sample:
            chosen[i] = _sample(logits[i], row)

    _per_row(rows, failed, "sampling", sample)
    top_n = min(max((max(0, r.top_n_tokens) for r in rows), default=0), logits.shape[-1])
    picked = logprobs.gather(-1, chosen[:, None])[:, 0]
    host = torch.stack([chosen.double(), picked.double()]).tolist()  # the step's one synchronisation
    tops: list[list[tuple[int, float]]] = [[] for _ in rows]
    if top_n:
        values, ids = logprobs.topk(top_n, dim=-1)
        values, ids = values.tolist(), ids.tolist()
        tops = [list(zip(ids[i], values[i], strict=True))[: r.top_n_tokens] for i, r in enumerate(rows)]
    return [_choice(i, host, tops[i], failed) for i in range(len(rows))]


def _choice(
    i: int, host: list[list[float]], top: list[tuple[int, float]], failed: dict[int, RowFailed]
) -> Choice | RowFailed:
    if i in failed:
        return failed[i]
    if not math.isfinite(host[1][i]):  # argmax over NaN picks a NaN: the model's output, not a parameter
        return RowFailed("the model computed non-finite logits for this request")
    return Choice(int(host[0][i]), host[1][i], top)


def _per_row(
    rows: Sequence[RowSampling],
    failed: dict[int, RowFailed],
    stage: str,
    work: Callable[[int, RowSampling], None],
) -> None:
    for i, row in enumerate(rows):
        if i in failed:
            continue
        try:
            work(i, row)
        except Exception as exc:
            failed[i] = RowFailed(f"{stage} failed: {type(exc).__name__}: {exc}")
            failed[i].__cause__ = exc


def _repetition_penalty(logits: torch.Tensor, i: int, row: RowSampling) -> None:
    if row.repetition_penalty == 1.0 or not row.seen:
        return
    ids = torch.tensor(sorted(set(row.seen)), device=logits.device)
    ids = ids[(ids >= 0) & (ids < logits.shape[-1])]
    values = logits[i, ids]
    # within float32's normal range, so that 0 × penalty is never 0 × inf; and the result stays finite
    penalty = min(max(row.repetition_penalty, FLOAT32_TINY), FLOAT32_MAX)
    penalised = torch.where(values > 0, values / penalty, values * penalty)
    logits[i, ids] = penalised.clamp(-FLOAT32_MAX, FLOAT32_MAX)


def _sample(logits: torch.Tensor, row: RowSampling) -> torch.Tensor:
    # the best token scores 0 before scaling, so scaling never divides inf by inf; a temperature too
    # small for float32 scales by float32's largest number instead: the argmax (ties share it)
    scale = min(1.0 / row.temperature, FLOAT32_MAX)
    scores = (logits - logits.max()) * scale
    if row.top_k:
        kth = scores.topk(min(row.top_k, scores.shape[-1])).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if row.top_p < 1.0:
        ordered, order = scores.sort(descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) >= row.top_p  # keep the smallest set reaching top_p
        drop[0] = False  # and the best token always: a top_p that float32 rounds to 0 keeps it alone
        scores = scores.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    if row.generator is None:  # the engine gives every sampling request a seed, reported back
        row.generator = torch.Generator(device=logits.device)
        row.generator.manual_seed(row.seed or 0)
    return torch.multinomial(scores.softmax(-1), 1, generator=row.generator)[0]
