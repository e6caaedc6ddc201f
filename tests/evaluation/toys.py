"""Small, fully known inputs for the metrics, evaluation and report tests: an exact-text matcher (so
every hit can be counted by hand) and builders of reviews and systems."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reviewstack.evaluation.model import Exclusion, Match, Point, Review, System

ASPECTS = ("idea", "prior_work", "experiments", "acceptance", "rejection", "suggestions", "other")


class ExactMatcher:
    """A generated point hits the first unmatched reference point with the same text (case-insensitive),
    one-to-one; records its calls so tests can check the batching."""

    name = "exact"
    version = "test-1"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def describe(self) -> dict[str, Any]:
        return {"agreement": {"f1": 1.0, "judge": "the tests' own labels", "protocol": "exact text"}}

    def match_many(self, pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[list[Match]]:
        self.calls.append(len(pairs))
        out = []
        for generated, reference in pairs:
            used: set[int] = set()
            matches = []
            for i, g in enumerate(generated):
                for j, r in enumerate(reference):
                    if j not in used and g.lower() == r.lower():
                        used.add(j)
                        matches.append(Match(i, j, 1.0))
                        break
            out.append(matches)
        return out


def points(spec: str, aspect: str | None = None) -> tuple[Point, ...]:
    """`points("a b c")` → three points with texts a, b, c."""
    return tuple(Point(text, aspect) for text in spec.split())


def structured(paper: str, by_aspect: dict[str, str], penalty: float | None = None, **lineage: Any) -> Review:
    """A 7-aspect review: `by_aspect` maps aspect → point texts; aspects not named are empty."""
    pts = tuple(p for aspect, spec in by_aspect.items() for p in points(spec, aspect))
    empty = tuple(a for a in ASPECTS if not by_aspect.get(a))
    if penalty is not None:
        lineage = {**lineage, "parameters": {"refusal_penalty": penalty, "temperature": 0.0}}
    return Review(paper, pts, empty_aspects=empty, aspects=ASPECTS, lineage=lineage)


def free(paper: str, spec: str) -> Review:
    return Review(paper, points(spec))


def system(name: str, reviews: Sequence[Review], kind: str = "generated", **kw: Any) -> System:
    return System(name, f"file:///store/reviews/{name}", kind, {r.paper_id: [r] for r in reviews}, **kw)  # type: ignore[arg-type]


def humans(by_paper: dict[str, Sequence[str]], name: str = "human") -> System:
    """`humans({"p1": ["a b", "b c"]})`: paper p1 with two reviewers, r1 raising a and b, r2 b and c."""
    reviews = {
        paper: [Review(paper, points(spec), reviewer=f"r{i + 1}") for i, spec in enumerate(specs)]
        for paper, specs in by_paper.items()
    }
    return System(name, "file:///store/datasets/gt/v1", "human", reviews, lineage={"dataset": "gt/v1"})


# Paper p1: reviewer r1 raised a b c, r2 a d, r3 b d e. All human points: a b c a d b d e (8).
HUMAN = {"p1": ["a b c", "a d", "b d e"], "p2": ["x y", "y z"], "p3": ["q"]}


def toy_systems() -> list[System]:
    """Two 7-aspect systems at λ 0 and 2 and a free-text import; every hit of theirs is counted in
    test_evaluate."""
    ft0 = system(
        "ft-0",
        [
            structured("p1", {"idea": "a", "rejection": "d x9"}, 0.0, model="m"),
            structured("p2", {"idea": "y"}, 0.0, model="m"),
            structured("p3", {"other": "q"}, 0.0, model="m"),
        ],
        lineage={"run_id": "r-1"},
        exclusions=[Exclusion("reviews/ft-0/p9.json", "not JSON")],
    )
    ft2 = system(
        "ft-2",
        [
            structured("p1", {"idea": "a b", "rejection": "e", "other": "n1"}, 2.0, model="m"),
            structured("p2", {"idea": "x", "other": "z"}, 2.0, model="m"),
            structured("p3", {"other": "n2"}, 2.0, model="m"),
        ],
    )
    gpt = system(
        "gpt", [free("p1", "a"), free("p2", "y z w"), free("p3", "r"), free("p4", "a")], kind="imported"
    )
    return [ft0, ft2, gpt]
