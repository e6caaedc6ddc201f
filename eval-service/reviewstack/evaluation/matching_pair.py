"""The pair matcher ("pair", opt-in): which generated points cover which human points, read by a
cross-encoder, with no LLM and no network.

It agrees with GPT-4 better than the default on GPT-4 reviewers it was not fitted on
(leave-one-method-out F1 0.292 against 0.262; the 30 papers' 95 % intervals, 0.22-0.35 and 0.20-0.31,
overlap), but it is not the default: it credits generic text. A canned eight-sentence review ("The
paper is well-written and easy to follow.", ...) gets a higher precision on NeurIPS papers with it than
a human reviewer's leave-one-out (bench/eval_throughput.py's generic-review control; on MARG,
bench/matcher_agreement.py's; docs/benchmarks.md), and no threshold both refuses it and keeps the
agreement. Its training data, GPT-4's comments, has no vacuous text to learn that from.

Two stages, because reading every pair is too slow and embedding cosine alone is too blunt:
1. candidates: static embeddings distilled from all-MiniLM-L6-v2 (`static_model`) give every pair a
   cosine; a pair is a candidate when the human point is among the generated point's closest few, or
   the generated point among the human point's (GPT-4 aligns a comment with the closest one or two of the
   other list). The shipped two each way keep 74 % of GPT-4's aligned pairs and read 23 % of all pairs.
2. the pair model (`pair_model`), a cross-encoder distilled from one fine-tuned on GPT-4's alignments,
   reads each candidate pair and gives the probability that the two points are the same point.
A one-to-one assignment (Hungarian) maximises the summed probability over candidate pairs, and the
assigned pairs whose probability reaches the threshold are the matches, with it as their score.

The candidate policy, the threshold and the measured agreement with GPT-4 live in
`pair_matcher_calibration.json`, written by bench/matcher_agreement.py on generators the pair model was not
trained on (leave-one-method-out); every report carries them (`describe`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache, cached_property
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import expit

from reviewstack.common.errors import FailedPrecondition, InvalidArgument
from reviewstack.evaluation.matching import StaticEncoder
from reviewstack.evaluation.model import Match
from reviewstack.evaluation.pair_model import PairModel, canonical

if TYPE_CHECKING:
    from model2vec import StaticModel

CALIBRATION = "pair_matcher_calibration.json"


@dataclass(frozen=True)
class CandidatePolicy:
    """Which pairs the pair model reads: each generated point's `per_point` closest human points and
    each human point's `per_point` closest generated points, by static cosine (0: every pair)."""

    per_point: int = 3

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def candidates(cosine: np.ndarray, policy: CandidatePolicy) -> np.ndarray:
    """The candidate mask of a (generated × human) cosine matrix."""
    k = policy.per_point
    if k <= 0 or (k >= cosine.shape[0] and k >= cosine.shape[1]):
        return np.ones(cosine.shape, dtype=bool)
    allowed = np.zeros(cosine.shape, dtype=bool)
    if k < cosine.shape[1]:
        top = np.argpartition(-cosine, k - 1, axis=1)[:, :k]
        np.put_along_axis(allowed, top, True, axis=1)
    else:
        allowed[:] = True
    if k < cosine.shape[0]:
        top = np.argpartition(-cosine, k - 1, axis=0)[:k, :]
        np.put_along_axis(allowed, top, True, axis=0)
    else:
        allowed[:] = True
    return allowed


def assign(probability: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one-to-one assignment of candidate pairs with the largest summed probability: (generated,
    human, probability) of each assigned candidate pair. Maximising the sum of probabilities maximises
    the expected number of assigned pairs GPT-4 would align."""
    if probability.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    weights = np.where(allowed, probability, 0.0)
    rows, cols = linear_sum_assignment(weights, maximize=True)
    keep = allowed[rows, cols]
    return rows[keep], cols[keep], probability[rows[keep], cols[keep]]


@dataclass(frozen=True)
class MatcherCalibration:
    """What bench/matcher_agreement.py fitted and measured: the candidate policy, the threshold, the
    pair model they were fitted for (its digest) and the agreement with GPT-4 reports quote."""

    candidates: CandidatePolicy
    threshold: float
    pair_model: str
    agreement: dict[str, Any]
    fitted_by: str = ""

    @classmethod
    def load(cls, path: Path | None = None) -> MatcherCalibration:
        raw = (
            path.read_bytes() if path else files("reviewstack.evaluation").joinpath(CALIBRATION).read_bytes()
        )
        try:
            data = json.loads(raw)
            return cls(
                candidates=CandidatePolicy(**data["candidates"]),
                threshold=float(data["threshold"]),
                pair_model=str(data["pair_model"]),
                agreement=dict(data["agreement"]),
                fitted_by=str(data.get("fitted_by", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FailedPrecondition(
                f"{CALIBRATION} is not a calibration this matcher can read ({exc!r}): refit it with "
                "`python bench/matcher_agreement.py --write-calibration`"
            ) from None

    def write(self, path: Path) -> None:
        data = {**asdict(self), "candidates": self.candidates.to_dict()}
        path.write_text(json.dumps(data, indent=2) + "\n")

    def check_fits(self, pair_model: PairModel) -> None:
        """A threshold means something only for the model it was fitted on."""
        if self.pair_model != pair_model.digest:
            raise FailedPrecondition(
                f"{CALIBRATION} was fitted for pair model {self.pair_model}, the installed one is "
                f"{pair_model.digest}: refit it with `python bench/matcher_agreement.py "
                "--write-calibration`, or reinstall reviewstack-evaluation"
            )

    @property
    def digest(self) -> str:
        fitted = {"candidates": self.candidates.to_dict(), "threshold": self.threshold}
        return hashlib.sha256(json.dumps(fitted, sort_keys=True).encode()).hexdigest()[:8]


@dataclass
class _Call:
    generated: list[int]  # text indices
    reference: list[int]
    allowed: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))


class PairMatcher:
    """Static-embedding candidates, the pair model, a one-to-one assignment."""

    name = "pair"

    def __init__(
        self,
        model: StaticModel | None = None,
        calibration: MatcherCalibration | None = None,
        pair_model: PairModel | None = None,
    ) -> None:
        self._static = model
        if calibration is not None:
            self.calibration = calibration
        if pair_model is not None:
            self.pair_model = pair_model
        self.last_stats: dict[str, float] = {}

    @cached_property
    def calibration(self) -> MatcherCalibration:
        calibration = MatcherCalibration.load()
        calibration.check_fits(self.pair_model)
        return calibration

    @cached_property
    def pair_model(self) -> PairModel:
        return PairModel()

    @cached_property
    def encoder(self) -> StaticEncoder:
        from reviewstack.evaluation.static_model import load_static_model

        return StaticEncoder(self._static or load_static_model())

    @property
    def version(self) -> str:
        from reviewstack.evaluation.static_model import NAME

        return f"pair-{self.pair_model.digest}+{NAME}+cal-{self.calibration.digest}"

    def describe(self) -> dict[str, Any]:
        """What a report records about the matcher besides name and version: how far its decisions can be
        trusted (its measured agreement with GPT-4) and what was fitted."""
        return {
            "threshold": self.calibration.threshold,
            "candidates": self.calibration.candidates.to_dict(),
            "agreement": self.calibration.agreement,
        }

    def match_many(self, pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[list[Match]]:
        """Each (generated, reference) pair's matches. Every distinct text is embedded once and every
        distinct candidate pair of texts is read once, across all the calls."""
        started = time.perf_counter()
        index: dict[str, int] = {}
        calls = []
        for generated, reference in pairs:
            ids = []
            for side in (generated, reference):
                for text in side:
                    if not isinstance(text, str):
                        raise InvalidArgument(f"points must be strings, got {type(text).__name__}: {text!r}")
                ids.append([index.setdefault(t, len(index)) for t in side])
            calls.append(_Call(*ids))
        texts = list(index)
        vectors = self.encoder.encode(texts).vectors
        worded = np.array([any(c.isalnum() for c in t) for t in texts], dtype=bool)  # blank: never a match
        policy = self.calibration.candidates
        wanted: dict[tuple[str, str], int] = {}
        for call in calls:
            if call.generated and call.reference:
                call.allowed = candidates(vectors[call.generated] @ vectors[call.reference].T, policy)
                call.allowed &= np.outer(worded[call.generated], worded[call.reference])
                for g, r in zip(*np.nonzero(call.allowed), strict=True):
                    key = canonical(texts[call.generated[g]], texts[call.reference[r]])
                    wanted.setdefault(key, len(wanted))
        read = time.perf_counter()
        logits = self.pair_model.logits(list(wanted))
        self.last_stats = {"pairs_read": len(wanted), "pair_model_s": time.perf_counter() - read}
        probability_of = expit(logits.astype(np.float64))
        results = []
        for call in calls:
            if not call.generated or not call.reference:
                results.append([])
                continue
            probability = np.zeros(call.allowed.shape)
            for g, r in zip(*np.nonzero(call.allowed), strict=True):
                key = canonical(texts[call.generated[g]], texts[call.reference[r]])
                probability[g, r] = probability_of[wanted[key]]
            rows, cols, values = assign(probability, call.allowed)
            results.append(
                [
                    Match(int(g), int(r), round(float(p), 4))
                    for g, r, p in zip(rows, cols, values, strict=True)
                    if p >= self.calibration.threshold
                ]
            )
        self.last_stats["seconds"] = time.perf_counter() - started
        return results


@cache
def pair_matcher() -> PairMatcher:
    """One per process, loaded at once so that a server's preload does the slow part before SERVING."""
    matcher = PairMatcher()
    _ = matcher.encoder, matcher.calibration, matcher.pair_model.session, matcher.pair_model.tokenizer
    return matcher
