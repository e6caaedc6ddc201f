"""What an evaluation reads: systems' reviews of papers, as points, and the human points they are scored
against. Every loader (review-service batch output, imported CSVs, the ground truth, an OpenAI-compatible
endpoint) produces these, so matching, metrics and reports never see a file format."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

SystemKind = Literal["generated", "imported", "human"]


@dataclass(frozen=True)
class Point:
    """One item of a review: a claim, a strength, a concern, a question."""

    text: str
    aspect: str | None = None  # the aspect key (reviewstack.common.aspects) when the source has aspects


@dataclass(frozen=True)
class Review:
    """One review of one paper: by a system, or by one human reviewer (`reviewer`)."""

    paper_id: str
    points: tuple[Point, ...]
    empty_aspects: tuple[str, ...] = ()  # aspect keys the reviewer declined ("<No related terms>")
    missing_aspects: tuple[str, ...] = ()  # aspect keys never written (the review was cut before them)
    aspects: tuple[str, ...] = ()  # the aspect keys the review is structured by; () for free text
    cut_short: bool = False  # it reached its token budget: whatever it wrote last was cut there
    reviewer: str = ""
    lineage: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Exclusion:
    """Something a loader or the evaluation left out, and why: reported, never dropped silently."""

    what: str  # a paper id, a file, a CSV row
    reason: str
    paper_id: str = ""  # the paper it concerns, when known: says why a system lacks that paper


@dataclass
class System:
    """A set of reviews of papers, one per paper; human reviewers are a system of several per paper."""

    name: str
    uri: str
    kind: SystemKind
    reviews: dict[str, list[Review]]  # paper id → its reviews (one, except for humans)
    lineage: dict[str, Any] = field(default_factory=dict)
    exclusions: list[Exclusion] = field(default_factory=list)

    @property
    def papers(self) -> set[str]:
        return set(self.reviews)


@dataclass(frozen=True)
class Match:
    """A generated point matched to a human point, one-to-one within a paper, with the matcher's score."""

    generated: int  # index into the generated points
    reference: int  # index into the reference (human) points
    score: float


class Matcher(Protocol):
    """Decides which generated points cover which human points. `match_many` takes every paper at once,
    so that a matcher can batch its model calls across papers. A matcher that can fail on one pair (an
    LLM judge) also exposes `failures: dict[int, str]` (pair index → why) after the call: those pairs
    are reported and left out, never scored as zero."""

    name: str  # "embedded", "pair", "llm"
    version: str  # changes whenever its decisions could change: reports record it

    def match_many(self, pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[list[Match]]: ...

    def describe(self) -> dict[str, Any]:
        """What a report records besides name and version; `agreement` is its measured agreement with
        GPT-4 (None where it was not measured), so every number in a report says how far it goes."""
        ...
