"""Scores of reviews against human points: per paper, over papers with bootstrap intervals, the human
leave-one-out anchor, and the pairwise comparison of two systems.

Everything here is arithmetic over matches the matcher already made, so it is exact and can be checked
by hand; the matcher is the only judgement in the chain. Precision always travels with hits: hit counts
reward volume, and a chatty system must not win on volume alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from reviewstack.evaluation.model import Match, Point

METRICS = ("hits", "recall", "precision", "f1")
CONFIDENCE = 0.95


@dataclass(frozen=True)
class PaperScore:
    """One review (or, for the leave-one-out, the mean over a paper's reviewers) against its reference.

    Undefined ratios are None, never 0: a review with no points has no precision, and averaging a made-up
    0 in would punish a system for saying nothing more than recall already does.
    """

    paper_id: str
    generated: float  # points in the review
    reference: float  # reference (human) points it is scored against
    hits: float  # reference points matched
    generated_hit: float  # generated points that matched (= hits for a one-to-one matcher)
    recall: float | None
    precision: float | None
    f1: float | None
    # aspect → (matched, points): recall over the reference points of each aspect, precision over the
    # generated points of each aspect; points without an aspect are left out of these.
    recall_by_aspect: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    precision_by_aspect: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    matches: tuple[Match, ...] = ()
    reviewers: int = 1  # how many reviews the values average (> 1 only for the leave-one-out)

    def value(self, metric: str) -> float | None:
        return getattr(self, metric)

    def to_json(self) -> dict[str, Any]:
        return {
            "paper_id": self.paper_id,
            "generated_points": self.generated,
            "reference_points": self.reference,
            "hits": self.hits,
            "generated_hit": self.generated_hit,
            "recall": self.recall,
            "precision": self.precision,
            "f1": self.f1,
            "reviewers": self.reviewers,
            "matches": [[m.generated, m.reference, round(m.score, 4)] for m in self.matches],
        }


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _f1(recall: float | None, precision: float | None) -> float | None:
    if recall is None or precision is None:
        return None
    return 2 * recall * precision / (recall + precision) if recall + precision else 0.0


def _by_aspect(points: Sequence[Point], matched: set[int]) -> dict[str, tuple[float, float]]:
    counts: dict[str, list[float]] = {}
    for i, point in enumerate(points):
        if point.aspect is None:
            continue
        hit_total = counts.setdefault(point.aspect, [0.0, 0.0])
        hit_total[0] += i in matched
        hit_total[1] += 1
    return {aspect: (hit, total) for aspect, (hit, total) in counts.items()}


def score_paper(
    paper_id: str, generated: Sequence[Point], reference: Sequence[Point], matches: Sequence[Match]
) -> PaperScore:
    """Score one review. Hits count distinct reference points, so a matcher that broke the one-to-one
    rule could not inflate them; indices outside the point lists are the matcher's bug and raise."""
    for m in matches:
        if not (0 <= m.generated < len(generated) and 0 <= m.reference < len(reference)):
            raise IndexError(
                f"paper {paper_id}: match {m} points outside {len(generated)} generated and"
                f" {len(reference)} reference points"
            )
    matched_ref = {m.reference for m in matches}
    matched_gen = {m.generated for m in matches}
    recall = _ratio(len(matched_ref), len(reference))
    precision = _ratio(len(matched_gen), len(generated))
    return PaperScore(
        paper_id=paper_id,
        generated=len(generated),
        reference=len(reference),
        hits=len(matched_ref),
        generated_hit=len(matched_gen),
        recall=recall,
        precision=precision,
        f1=_f1(recall, precision),
        recall_by_aspect=_by_aspect(reference, matched_ref),
        precision_by_aspect=_by_aspect(generated, matched_gen),
        matches=tuple(matches),
    )


def _mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def _mean_aspects(parts: Sequence[Mapping[str, tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    """Mean (matched, points) per aspect over the reviewers: the ratio of the means is then the pooled
    ratio over the paper's leave-one-out splits."""
    keys = {k for p in parts for k in p}
    return {
        k: (
            sum(p.get(k, (0, 0))[0] for p in parts) / len(parts),
            sum(p.get(k, (0, 0))[1] for p in parts) / len(parts),
        )
        for k in keys
    }


def mean_over_reviewers(scores: Sequence[PaperScore]) -> PaperScore:
    """A paper's leave-one-out value: each metric averaged over the reviewers where it is defined."""
    return PaperScore(
        paper_id=scores[0].paper_id,
        generated=sum(s.generated for s in scores) / len(scores),
        reference=sum(s.reference for s in scores) / len(scores),
        hits=sum(s.hits for s in scores) / len(scores),
        generated_hit=sum(s.generated_hit for s in scores) / len(scores),
        recall=_mean_defined([s.recall for s in scores]),
        precision=_mean_defined([s.precision for s in scores]),
        f1=_mean_defined([s.f1 for s in scores]),
        recall_by_aspect=_mean_aspects([s.recall_by_aspect for s in scores]),
        precision_by_aspect=_mean_aspects([s.precision_by_aspect for s in scores]),
        reviewers=len(scores),
    )


def interval(
    values: Sequence[float],
    *,
    resamples: int,
    seed: int,
    statistic: Callable[..., Any] = np.mean,
) -> dict[str, Any]:
    """Mean with a percentile bootstrap 95% interval over papers (the unit that was sampled).

    Each interval draws from a fresh generator seeded with `seed`, so a number does not change when
    another metric is added before it. Fewer than two papers, or `resamples` = 0, give no interval.
    """
    data = np.asarray(values, dtype=float)
    out: dict[str, Any] = {"mean": float(statistic(data)) if data.size else None, "low": None, "high": None}
    out["n"] = int(data.size)
    if data.size >= 2 and resamples > 0:
        result = stats.bootstrap(
            (data,),
            statistic,
            n_resamples=resamples,
            confidence_level=CONFIDENCE,
            method="percentile",
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
        out["low"] = float(result.confidence_interval.low)
        out["high"] = float(result.confidence_interval.high)
    return out


def _defined(scores: Sequence[PaperScore], metric: str) -> list[float]:
    return [v for s in scores if (v := s.value(metric)) is not None]


def _aspect_summary(
    scores: Sequence[PaperScore], which: str, *, resamples: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Per aspect: the mean over the papers that have points of that aspect (macro, like the overall
    numbers) with its interval, plus the pooled counts (micro)."""
    out: dict[str, dict[str, Any]] = {}
    keys = sorted({k for s in scores for k in getattr(s, which)})
    for key in keys:
        pairs = [getattr(s, which)[key] for s in scores if getattr(s, which).get(key, (0, 0))[1] > 0]
        entry = interval([hit / total for hit, total in pairs], resamples=resamples, seed=seed)
        matched, total = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
        entry.update(matched=matched, points=total, pooled=_ratio(matched, total))
        out[key] = entry
    return out


def summarize(scores: Sequence[PaperScore], *, resamples: int, seed: int) -> dict[str, Any]:
    """Overall numbers of one system: each metric's mean over papers with its interval (macro: every
    paper weighs the same), the pooled totals (micro), and the same per aspect."""
    generated = sum(s.generated for s in scores)
    reference = sum(s.reference for s in scores)
    hits = sum(s.hits for s in scores)
    generated_hit = sum(s.generated_hit for s in scores)
    recall, precision = _ratio(hits, reference), _ratio(generated_hit, generated)
    return {
        "papers": len(scores),
        **{m: interval(_defined(scores, m), resamples=resamples, seed=seed) for m in METRICS},
        "generated_points": interval([s.generated for s in scores], resamples=resamples, seed=seed),
        "micro": {
            "hits": hits,
            "reference_points": reference,
            "generated_hit": generated_hit,
            "generated_points": generated,
            "recall": recall,
            "precision": precision,
            "f1": _f1(recall, precision),
        },
        "per_aspect": {
            "recall": _aspect_summary(scores, "recall_by_aspect", resamples=resamples, seed=seed),
            "precision": _aspect_summary(scores, "precision_by_aspect", resamples=resamples, seed=seed),
        },
    }


def _sign_test(wins: int, losses: int) -> dict[str, Any]:
    """Two-sided sign test on the decisive papers (ties carry no sign), with the exact (Clopper-Pearson)
    interval of the share of decisive papers that are wins."""
    if wins + losses == 0:
        return {"p_value": None, "win_share": None, "win_share_low": None, "win_share_high": None}
    test = stats.binomtest(wins, wins + losses, 0.5, alternative="two-sided")
    ci = test.proportion_ci(confidence_level=CONFIDENCE, method="exact")
    return {
        "p_value": float(test.pvalue),
        "win_share": wins / (wins + losses),
        "win_share_low": float(ci.low),
        "win_share_high": float(ci.high),
    }


def compare(
    a: Mapping[str, PaperScore],
    b: Mapping[str, PaperScore],
    *,
    resamples: int,
    seed: int,
    criteria: Sequence[str] = ("hits", "precision"),
) -> dict[str, Any]:
    """Pairwise comparison ("PK") of A against B over their common papers: per criterion, win / tie /
    loss counts from A's side, a sign test, and the mean paired difference A − B with its interval.

    A paper enters a criterion only where both values are defined. Values are compared with a tolerance
    so that means over reviewers that are equal up to rounding count as ties.
    """
    common = sorted(set(a) & set(b))
    out: dict[str, Any] = {"papers": len(common)}
    for criterion in criteria:
        diffs = [
            va - vb
            for p in common
            if (va := a[p].value(criterion)) is not None and (vb := b[p].value(criterion)) is not None
        ]
        signs = [0 if math.isclose(d, 0.0, abs_tol=1e-9) else (1 if d > 0 else -1) for d in diffs]
        wins, ties, losses = signs.count(1), signs.count(0), signs.count(-1)
        difference = interval(diffs, resamples=resamples, seed=seed)
        out[criterion] = {
            "papers": len(diffs),
            "wins": wins,
            "ties": ties,
            "losses": losses,
            **_sign_test(wins, losses),
            "mean_difference": difference["mean"],
            "difference_low": difference["low"],
            "difference_high": difference["high"],
        }
    return out
