"""Choosing the next token for every running request at once, each with its own parameters.

The order is TGI's: repetition penalty, then the refusal penalty (on the raw logit, so λ means the same
whatever the temperature), then temperature / top-k / top-p, then greedy or seeded sampling.

What a request asked for (`SamplingSettings`, fixed) is kept apart from what decoding it changes
(`SlotSampler`'s per-slot state). The state lives on the model's device: each slot's settings as
tensors, and a seen-token mask per slot that the chosen tokens are written into on the device, so a
decode step does no host work per row for the repetition penalty and applies every stage to the batch
in a few kernels. The one per-row operation left is drawing each sampling row's noise from its own
generator, which keeps a seeded request's text independent of what else is in the batch. One
device→host copy a step brings back the chosen ids, their log-probabilities and whether each row's
distribution was finite.

Every parameter that passed validation must give a distribution, whatever its size: temperature scales
logits from which the row's maximum was subtracted (the best token scores 0, so a temperature of 1e-300
gives an argmax, not inf/inf = NaN), and a repetition penalty's result is kept within float32. A row that
still fails (or whose logits the model made non-finite) fails alone: `choose` returns `RowFailed` in its
place and the other rows keep their tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from reviewstack.penalty.core import PenaltyTable, RowTracker
from reviewstack.penalty.torch_ops import lower_logits

FLOAT32_MAX = torch.finfo(torch.float32).max
FLOAT32_TINY = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class SamplingSettings:
    """One request's decoding parameters, as validation accepted them."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    refusal_penalty: float = 0.0
    top_n_tokens: int = 0
    seed: int | None = None


@dataclass(frozen=True)
class Choice:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # (id, logprob) of the most likely tokens, when asked for


class RowFailed(RuntimeError):
    """One row of a step could not be sampled: its request fails, the others go on."""


class SlotSampler:
    """The sampling state of `slots` KV-cache slots over a `vocab`-token model, on `device`."""

    def __init__(
        self, slots: int, vocab: int, device: torch.device, penalty_table: PenaltyTable | None = None
    ) -> None:
        self.vocab = vocab
        self.device = device
        self.penalty_table = penalty_table
        self._settings: list[SamplingSettings] = [SamplingSettings()] * slots
        self._trackers: list[RowTracker | None] = [None] * slots
        self._generators: list[torch.Generator | None] = [None] * slots
        self._penalty = torch.ones(slots, device=device)
        self._scale = torch.ones(slots, device=device)  # 1 / temperature, within float32
        self._top_k = torch.full((slots,), vocab, dtype=torch.long, device=device)
        self._top_p = torch.full((slots,), math.inf, device=device)  # inf: no top-p cut
        self._seen = torch.zeros(slots, vocab, dtype=torch.bool, device=device)

    def start(self, slot: int, settings: SamplingSettings, prompt: Sequence[int]) -> None:
        """Give `slot` to a new request: its settings, and the prompt as the tokens already seen."""
        self._settings[slot] = settings
        use_table = settings.refusal_penalty > 0 and self.penalty_table is not None
        self._trackers[slot] = RowTracker(self.penalty_table) if use_table else None
        self._generators[slot] = None
        if settings.do_sample:  # the engine gives every sampling request a seed, reported back
            generator = torch.Generator(device=self.device)
            generator.manual_seed(settings.seed or 0)
            self._generators[slot] = generator
        # within float32's normal range, so that 0 × penalty is never 0 × inf
        self._penalty[slot] = min(max(settings.repetition_penalty, FLOAT32_TINY), FLOAT32_MAX)
        self._scale[slot] = (
            min(1.0 / settings.temperature, FLOAT32_MAX) if settings.temperature else FLOAT32_MAX
        )
        self._top_k[slot] = min(settings.top_k, self.vocab) if settings.top_k > 0 else self.vocab
        self._top_p[slot] = settings.top_p if settings.top_p < 1.0 else math.inf
        self._seen[slot] = False
        if settings.repetition_penalty != 1.0:
            ids = torch.tensor(prompt, dtype=torch.long, device=self.device)
            self._seen[slot, ids[(ids >= 0) & (ids < self.vocab)]] = True

    def choose(self, slots: Sequence[int], logits: torch.Tensor) -> list[Choice | RowFailed]:
        """Next token of each slot, whose logits are the rows of `logits` ([B, vocab], float32; modified
        in place), or why that row has none. An error of a stage that works on the whole batch is raised:
        it belongs to no one row."""
        settings = [self._settings[s] for s in slots]
        repeating = any(s.repetition_penalty != 1.0 for s in settings)
        sampled = [i for i, s in enumerate(settings) if s.do_sample]
        if repeating or sampled:  # the greedy, unpenalised batch needs no per-slot state
            index = torch.tensor(list(slots), dtype=torch.long, device=logits.device)
        if repeating:
            self._repetition_penalty(logits, index)
        self._refusal_penalty(logits, slots)
        logprobs = logits.log_softmax(-1)
        chosen = logprobs.argmax(-1)
        finite = torch.ones_like(chosen, dtype=torch.bool)
        if sampled:
            rows = slice(None) if len(sampled) == len(slots) else torch.tensor(sampled, device=logits.device)
            chosen[rows], finite[rows] = self._sample(logits[rows], index[rows], sampled, slots)
        if repeating:  # rows without the penalty keep an empty mask
            active = self._penalty[index] != 1.0
            self._seen[index, chosen] |= active
        picked = logprobs.gather(-1, chosen[:, None])[:, 0]
        host = torch.stack([chosen.double(), picked.double(), finite.double()]).tolist()  # the one sync
        top_n = min(max((max(0, s.top_n_tokens) for s in settings), default=0), logits.shape[-1])
        tops: list[list[tuple[int, float]]] = [[] for _ in slots]
        if top_n:
            values, ids = logprobs.topk(top_n, dim=-1)
            values, ids = values.tolist(), ids.tolist()
            tops = [
                list(zip(ids[i], values[i], strict=True))[: s.top_n_tokens] for i, s in enumerate(settings)
            ]
        choices = [_choice(i, host, tops[i]) for i in range(len(slots))]
        for slot, choice in zip(slots, choices, strict=True):
            tracker = self._trackers[slot]
            if tracker is not None and isinstance(choice, Choice):
                tracker.advance(choice.token)
        return choices

    def _repetition_penalty(self, logits: torch.Tensor, index: torch.Tensor) -> None:
        penalty = self._penalty[index][:, None]
        penalised = torch.where(logits > 0, logits / penalty, logits * penalty).clamp(
            -FLOAT32_MAX, FLOAT32_MAX
        )
        logits.copy_(torch.where(self._seen[index], penalised, logits))

    def _refusal_penalty(self, logits: torch.Tensor, slots: Sequence[int]) -> None:
        rows, ids, amounts = [], [], []
        for i, slot in enumerate(slots):
            tracker = self._trackers[slot]
            penalised = tracker.penalised() if tracker is not None else ()
            if penalised:
                rows.append(i)
                ids.append(penalised)
                amounts.append(self._settings[slot].refusal_penalty)
        if rows:
            lower_logits(logits, rows, ids, amounts)

    def _sample(
        self, logits: torch.Tensor, index: torch.Tensor, rows: list[int], slots: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled ids of these rows, and whether each row's distribution was finite."""
        # the best token scores 0 before scaling, so scaling never divides inf by inf
        scores = (logits - logits.max(-1, keepdim=True).values) * self._scale[index][:, None]
        settings = [self._settings[slots[i]] for i in rows]
        order = None
        if any(s.top_k > 0 or s.top_p < 1.0 for s in settings):  # a sort only when a row cuts
            scores, order = scores.sort(-1, descending=True)
            kth = scores.gather(-1, self._top_k[index][:, None] - 1)
            scores = scores.masked_fill(scores < kth, -math.inf)  # top-k, ties with the k-th kept
        probs = scores.softmax(-1)
        if order is not None:
            drop = probs.cumsum(-1) - probs >= self._top_p[index][:, None]  # the smallest set reaching top_p
            drop[:, 0] = False  # and the best token always: a top_p that float32 rounds to 0 keeps it alone
            probs = probs.masked_fill(drop, 0.0)
        # an exponential race: argmax(p / E), E ~ Exp(1), draws from p without normalising it again
        noise = torch.empty_like(probs)
        for row, i in enumerate(rows):
            noise[row].exponential_(generator=self._generators[slots[i]])
        picked = (probs / noise.clamp_(min=FLOAT32_TINY)).argmax(-1)
        if order is not None:
            picked = order.gather(-1, picked[:, None])[:, 0]
        return picked, probs.isfinite().all(-1)


def _choice(i: int, host: list[list[float]], top: list[tuple[int, float]]) -> Choice | RowFailed:
    if not math.isfinite(host[1][i]):  # argmax over NaN picks a NaN: the model's output, not a parameter
        return RowFailed("the model computed non-finite logits for this request")
    if not host[2][i]:
        return RowFailed(
            "sampling failed: the row's distribution is not finite (temperature, top-k or top-p)"
        )
    return Choice(int(host[0][i]), host[1][i], top)
