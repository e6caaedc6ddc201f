"""The whole evaluation as one call: systems' reviews and the human points in, one JSON-serialisable
report out (every number, and the lineage of every input, so any number can be traced back).

Order of work: choose the papers → match every (review, reference) pair in one `match_many` call, so a
matcher can batch across papers and systems → per-paper scores → overall numbers with intervals →
review statistics → pairwise comparisons → penalty sweeps.

Humans are scored too, leave-one-out: each reviewer's points against the union of the other reviewers'
points. That is the sanity anchor: a system that beats humans at agreeing with humans is suspicious. To
compare a system with it like for like, each system is also scored in the same frame (its review against
the other reviewers' points, for each held-out reviewer), which costs one matcher pair per reviewer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import combinations
from typing import Any

from reviewstack.common.errors import FailedPrecondition, InvalidArgument
from reviewstack.evaluation.metrics import (
    CONFIDENCE,
    PaperScore,
    compare,
    mean_over_reviewers,
    score_paper,
    summarize,
)
from reviewstack.evaluation.model import Exclusion, Matcher, Point, System
from reviewstack.evaluation.review_stats import distribution, review_statistics
from reviewstack.evaluation.sweep import penalty_sweeps, refusal_penalty, review_lineage

REPORT_FORMAT = "reviewstack.evaluation.report/1"
Progress = Callable[[str, int, int, str], None]

# Published context for the anchor (not the same measure: theirs is the share of one reviewer's comments
# that another single reviewer raised, with GPT-4 extracting and matching the comments).
LIANG_2023 = {
    "short": "Liang et al. (2023)",
    "citation": "Liang et al. 2023, Can large language models provide useful feedback on research papers?"
    " A large-scale empirical analysis (arXiv:2310.01783)",
    "venue": "ICLR",
    "human_human_overlap": 0.35,
    "gpt4_human_overlap": 0.39,
    "note": "pairwise hit rate between two single reviewers, GPT-4 extraction and matching; context, not the"
    " same measure as this report's",
}


def _exclusion(e: Exclusion, source: str) -> dict[str, str]:
    out = {"what": e.what, "reason": e.reason, "source": source}
    if getattr(e, "paper_id", ""):
        out["paper_id"] = e.paper_id
    return out


def _check(systems: Sequence[System], human: System, bootstrap: int) -> None:
    names = [s.name for s in systems] + [human.name]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidArgument(f"system names must be unique (the human set included); repeated: {duplicates}")
    if bootstrap < 0:
        raise InvalidArgument(f"bootstrap must be ≥ 0 resamples (0 = no intervals), got {bootstrap}")
    for system in systems:
        for paper, reviews in system.reviews.items():
            if len(reviews) > 1:
                raise InvalidArgument(
                    f"system {system.name!r} holds {len(reviews)} reviews of paper {paper!r}; a system has"
                    " one review per paper (only the human set has several): load the others as separate"
                    " systems"
                )


def _choose_papers(
    systems: Sequence[System], human: System, papers: Sequence[str] | None
) -> tuple[list[str], list[dict[str, str]]]:
    """The papers to score and why the others were left out. Without `papers`, every paper that every
    system reviewed and humans reviewed; with it, those of `papers` with human points (a system missing
    one is reported and scored on the rest)."""
    dropped: list[dict[str, str]] = []
    human_papers = {p for p, reviews in human.reviews.items() if reviews}
    if papers is None:
        everyone = [s.papers for s in systems] + [human_papers]
        candidates = sorted(set.intersection(*everyone))
        for paper in sorted(set.union(*everyone) - set(candidates)):
            missing = [s.name for s in (*systems, human) if paper not in s.papers or not s.reviews[paper]]
            dropped.append(
                {"what": paper, "reason": f"not reviewed by {', '.join(missing)}", "source": "evaluation"}
            )
    else:
        candidates = list(dict.fromkeys(papers))
        for paper in [p for p in candidates if p not in human_papers]:
            dropped.append({"what": paper, "reason": f"no reviews in {human.name!r}", "source": "evaluation"})
        candidates = [p for p in candidates if p in human_papers]
        for system in systems:
            for paper in candidates:
                if paper not in system.reviews:
                    reason = f"system {system.name!r} has no review of it; that system is scored without it"
                    dropped.append({"what": paper, "reason": reason, "source": "evaluation"})
    chosen = []
    for paper in candidates:
        if any(r.points for r in human.reviews[paper]):
            chosen.append(paper)
        else:
            dropped.append(
                {"what": paper, "reason": "its human reviews hold no points", "source": "evaluation"}
            )
    if not chosen:
        raise FailedPrecondition(
            "no paper is left to evaluate: none is reviewed by every system and has human points (see the"
            " exclusions: "
            + "; ".join(f"{d['what']}: {d['reason']}" for d in dropped[:5])
            + "); check that the systems and the ground truth name papers the same way"
        )
    return chosen, dropped


def reference_points(human: System, paper: str, leave_out: int | None = None) -> list[tuple[str, Point]]:
    """The human points of a paper with their reviewer's id, reviewer by reviewer in the loader's order
    (match indices refer to this order: points.json records it from here), without the points of
    reviewer `leave_out`."""
    reviews = human.reviews[paper]
    return [(r.reviewer, p) for i, r in enumerate(reviews) if i != leave_out for p in r.points]


def _references(human: System, paper: str, leave_out: int | None = None) -> list[Point]:
    return [p for _, p in reference_points(human, paper, leave_out)]


class _Jobs:
    """The matcher pairs, collected first so that one `match_many` call covers them all."""

    def __init__(self) -> None:
        self.keys: list[tuple[Any, ...]] = []
        self.points: list[tuple[str, list[Point], list[Point]]] = []

    def add(
        self, key: tuple[Any, ...], paper: str, generated: Sequence[Point], reference: Sequence[Point]
    ) -> None:
        self.keys.append(key)
        self.points.append((paper, list(generated), list(reference)))

    def run(self, matcher: Matcher) -> dict[tuple[Any, ...], PaperScore]:
        pairs = [([p.text for p in g], [p.text for p in r]) for _, g, r in self.points]
        results = matcher.match_many(pairs) if pairs else []
        where = f"matcher {matcher.name!r} (version {matcher.version})"
        if len(results) != len(pairs):
            raise FailedPrecondition(
                f"{where} returned {len(results)} results for {len(pairs)} pairs; fix it"
            )
        failures: dict[int, str] = getattr(matcher, "failures", None) or {}
        self.failed = [
            {
                "what": self.points[i][0],
                "reason": f"{where} could not judge {' '.join(map(str, self.keys[i][:2]))}: {why}",
                "source": "evaluation",
                "paper_id": self.points[i][0],
            }
            for i, why in sorted(failures.items())
        ]
        scores = {}
        for index, (key, (paper, generated, reference), matches) in enumerate(
            zip(self.keys, self.points, results, strict=True)
        ):
            if index in failures:  # not a zero: the paper is left out of that score, and reported
                continue
            try:
                scores[key] = score_paper(paper, generated, reference, matches)
            except IndexError as exc:
                raise FailedPrecondition(f"{where}: {exc}; fix the matcher") from exc
        return scores


def evaluate(
    systems: list[System],
    human: System,
    matcher: Matcher,
    *,
    papers: list[str] | None = None,
    exclusions: Sequence[Exclusion] = (),
    bootstrap: int = 1000,
    seed: int = 0,
    progress: Progress | None = None,
    leave_one_out_frame: bool = True,
) -> dict[str, Any]:
    """Score `systems` against `human` on the aligned `papers` (all papers every input shares when None).

    `exclusions` are what the caller already left out (e.g. by aligning papers); they are reported with
    the loaders' own. `leave_one_out_frame=False` skips scoring systems against each held-out split,
    saving matcher calls (an LLM matcher pays per call); the comparisons with humans are then left out.
    """
    report_progress = progress or (lambda stage, done, total, message: None)
    _check(systems, human, bootstrap)
    chosen, dropped = _choose_papers(systems, human, papers)
    loo_papers = [p for p in chosen if len(human.reviews[p]) >= 2]
    dropped += [
        {"what": p, "reason": "one human review only: no leave-one-out", "source": "evaluation"}
        for p in chosen
        if p not in loo_papers
    ]

    jobs = _Jobs()
    for system in systems:
        for paper in chosen:
            if paper in system.reviews:
                generated = system.reviews[paper][0].points
                jobs.add(("system", system.name, paper), paper, generated, _references(human, paper))
    for paper in loo_papers:
        for i, review in enumerate(human.reviews[paper]):
            others = _references(human, paper, leave_out=i)
            jobs.add(("human", paper, i), paper, review.points, others)
            for system in systems if leave_one_out_frame else ():
                if paper in system.reviews:
                    jobs.add(("frame", system.name, paper, i), paper, system.reviews[paper][0].points, others)
    report_progress("matching", 0, len(jobs.keys), f"{len(jobs.keys)} pairs, matcher {matcher.name}")
    scores = jobs.run(matcher)
    dropped += jobs.failed
    report_progress("matching", len(jobs.keys), len(jobs.keys), "done")

    def split_means(*prefix: str) -> dict[str, PaperScore]:
        """Per paper, the mean over its held-out reviewers of the splits keyed (*prefix, paper, i)."""
        out = {}
        for paper in loo_papers:
            splits = [scores.get((*prefix, paper, i)) for i in range(len(human.reviews[paper]))]
            if all(splits):
                out[paper] = mean_over_reviewers(splits)
        return out

    kwargs = {"resamples": bootstrap, "seed": seed}
    total = len(systems) + 1
    results: dict[str, dict[str, Any]] = {}
    frames: dict[str, dict[str, PaperScore]] = {}
    per_system: dict[str, dict[str, PaperScore]] = {}
    for done, system in enumerate(systems):
        report_progress("metrics", done, total, system.name)
        own = {p: scores[("system", system.name, p)] for p in chosen if ("system", system.name, p) in scores}
        per_system[system.name] = own
        entry: dict[str, Any] = {
            "name": system.name,
            "kind": system.kind,
            "refusal_penalty": refusal_penalty(system),
            "overall": summarize(list(own.values()), **kwargs),
            "statistics": review_statistics([system.reviews[p][0] for p in own]),
            "per_paper": [s.to_json() for s in own.values()],
        }
        if leave_one_out_frame:
            frames[system.name] = split_means("frame", system.name)
            entry["leave_one_out"] = {
                "overall": summarize(list(frames[system.name].values()), **kwargs),
                "per_paper": [s.to_json() for s in frames[system.name].values()],
            }
        results[system.name] = entry

    report_progress("metrics", len(systems), total, human.name)
    human_scores = split_means("human")
    human_entry = {
        "name": human.name,
        "kind": human.kind,
        "papers": len(chosen),
        "reviewers_per_paper": distribution([len(human.reviews[p]) for p in chosen]),
        "overall": summarize(list(human_scores.values()), **kwargs),
        "statistics": review_statistics([r for p in chosen for r in human.reviews[p]]),
        "per_paper": [
            {
                **s.to_json(),
                "splits": [
                    {"reviewer": r.reviewer, **scores[("human", p, i)].to_json()}
                    for i, r in enumerate(human.reviews[p])
                ],
            }
            for p, s in human_scores.items()
        ],
    }
    report_progress("metrics", total, total, "done")

    pairs = list(combinations(systems, 2))
    pairwise = []
    for done, (a, b) in enumerate(pairs):
        report_progress("pairwise", done, len(pairs) + len(frames), f"{a.name} vs {b.name}")
        comparison = compare(per_system[a.name], per_system[b.name], **kwargs)
        pairwise.append({"a": a.name, "b": b.name, "frame": "all human points", **comparison})
    for done, (name, frame) in enumerate(frames.items(), start=len(pairs)):
        report_progress("pairwise", done, len(pairs) + len(frames), f"{name} vs {human.name}")
        comparison = compare(frame, human_scores, **kwargs)
        pairwise.append({"a": name, "b": human.name, "frame": "leave-one-out", **comparison})
    report_progress("pairwise", len(pairwise), len(pairwise), "done")

    all_exclusions = [_exclusion(e, s.name) for s in (*systems, human) for e in s.exclusions]
    all_exclusions += [_exclusion(e, "alignment") for e in exclusions] + dropped
    return {
        "format": REPORT_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "bootstrap": bootstrap,
            "seed": seed,
            "confidence": CONFIDENCE,
            "interval": "percentile bootstrap over papers",
            "leave_one_out_frame": leave_one_out_frame,
        },
        "matcher": {"name": matcher.name, "version": matcher.version, **matcher.describe()},
        "papers": chosen,
        "inputs": {
            "systems": [_input(s, chosen) for s in systems],
            "human": _input(human, chosen),
        },
        "systems": list(results.values()),
        "human": human_entry,
        "pairwise": pairwise,
        "penalty_sweeps": penalty_sweeps(systems, results),
        "exclusions": all_exclusions,
        "context": {"liang2023": LIANG_2023},
    }


def _input(system: System, chosen: Sequence[str]) -> dict[str, Any]:
    used = [p for p in chosen if p in system.reviews]
    return {
        "name": system.name,
        "uri": system.uri,
        "kind": system.kind,
        "lineage": system.lineage,
        "review_lineage": review_lineage(system, used),
        "refusal_penalty": refusal_penalty(system),
        "papers_loaded": len(system.reviews),
        "papers_used": len(used),
        "reviews_used": sum(len(system.reviews[p]) for p in used),
        "exclusions": [_exclusion(e, system.name) for e in system.exclusions],
    }


__all__ = ["LIANG_2023", "REPORT_FORMAT", "evaluate", "reference_points"]
