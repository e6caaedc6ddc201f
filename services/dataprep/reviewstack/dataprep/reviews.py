"""Human review records (PeerRead / OpenReview JSON): parsing, validation and section splitting.

The human reviews are the ground truth of the evaluation (a generated point that matches a human point is
a hit) and the raw material of the aspect targets; `points.py` cuts each review into points.

Input shape (the NeurIPS 2025 set, PeerRead style): `{title, abstract, id, authors, accepted, keywords,
conference, reviews: [...]}`; an official review has `IS_META_REVIEW: false`, `comments` with the
sections `SUMMARY:`, `STRENGTHS AND WEAKNESSES:`, `QUESTIONS:`, `LIMITATIONS:`, and integer scores
(`RECOMMENDATION`, `REVIEWER_CONFIDENCE`, `CLARITY`, `IMPACT`, `ORIGINALITY`); the last record
(`IS_META_REVIEW: true`, `TITLE: "Decision"`) holds the decision in `comments` ("DECISION:\\nAccept
(poster)") and in `RECOMMENDATION`. Older PeerRead sets (ICLR 2017, ACL 2017, NIPS 2013-2017) write
scores as strings ("4"), leave out `accepted`, and have free-text comments without section headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from reviewstack.common.errors import InvalidArgument

__all__ = [
    "HumanPoint",
    "HumanReview",
    "PaperReviews",
    "PointKind",
    "RawPaperRecord",
    "RawReview",
    "has_recognisable_sections",
    "parse_review_record",
    "section_kind",
    "split_sections",
]

PointKind = Literal["summary", "strength", "weakness", "question", "limitation", "other"]
ScoreValue = float | int | str

# --- raw record models ---------------------------------------------------------------------------------


class RawReview(BaseModel):
    """One record of `reviews[]`. Unknown keys are kept (`model_extra`): they are the scores."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    is_meta_review: bool = Field(
        default=False, validation_alias=AliasChoices("IS_META_REVIEW", "is_meta_review")
    )
    comments: str = Field(default="", validation_alias=AliasChoices("comments", "COMMENTS", "review"))
    title: str | None = Field(default=None, validation_alias=AliasChoices("TITLE", "title"))
    date: str | None = Field(default=None, validation_alias=AliasChoices("DATE", "date"))

    @field_validator("comments", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value


class RawPaperRecord(BaseModel):
    """A paper's record: strict about `id` and `reviews`, lenient about everything else."""

    model_config = ConfigDict(extra="allow")

    id: str
    reviews: list[RawReview]
    title: str = ""
    abstract: str = ""
    authors: list[str] = Field(default_factory=list)
    accepted: bool | None = None
    keywords: list[str] = Field(default_factory=list)
    conference: str | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_is_text(cls, value: Any) -> Any:
        """PeerRead ids are strings ("304"); some dumps write them as numbers. Both become text."""
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty")
        return value.strip() if isinstance(value, str) else value

    @field_validator("title", "abstract", mode="before")
    @classmethod
    def _none_is_blank(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("accepted", mode="before")
    @classmethod
    def _lenient_accepted(cls, value: Any) -> Any:
        """Not needed downstream when a decision exists, so an unreadable value becomes None."""
        if isinstance(value, str):
            return _ACCEPTED_WORDS.get(value.strip().lower())
        return value if isinstance(value, bool | int) or value is None else None

    @field_validator("authors", "keywords", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        """A single string, a list of strings, or OpenReview-style [{"name": ...}] all become names."""
        if value is None:
            return []
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [v.get("name", "") if isinstance(v, dict) else v for v in value]
        return value


_ACCEPTED_WORDS = {
    "true": True,
    "yes": True,
    "accept": True,
    "accepted": True,
    "1": True,
    "false": False,
    "no": False,
    "reject": False,
    "rejected": False,
    "0": False,
}


# --- parsed objects ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HumanReview:
    """One official review. `sections` maps canonical names ("summary", "strengths_and_weaknesses",
    "questions", "limitations", ...) to text; it is empty when `text` has no recognisable header."""

    reviewer_id: str
    text: str
    sections: dict[str, str]
    scores: dict[str, ScoreValue]
    title: str | None = None

    def has_recognisable_sections(self) -> bool:
        return bool(self.sections)


@dataclass(frozen=True)
class PaperReviews:
    """A paper's reviews: official ones only, numbered R1..Rn in file order."""

    paper_id: str
    title: str
    abstract: str
    accepted: bool | None
    decision: str | None
    reviews: list[HumanReview]
    source: str = ""
    keywords: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HumanPoint:
    """One point a human reviewer made; `index` is its order within the review (0-based)."""

    text: str
    reviewer_id: str
    section: str
    kind: PointKind
    index: int


def has_recognisable_sections(review: HumanReview) -> bool:
    """False when the review's comments had no section header: callers report such reviews."""
    return review.has_recognisable_sections()


# --- record parsing ------------------------------------------------------------------------------------

# Keys of a review record that are not scores.
_NON_SCORE_KEYS = frozenset({"IS_META_REVIEW", "COMMENTS", "TITLE", "DATE", "OTHER_KEYS", "IS_ANNOTATED"})
_NUMBER_RE = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*$")
# OpenReview-style option strings: "8: Top 50% of accepted papers, clear accept" -> 8.
_LEADING_SCORE_RE = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*:\s*\S")
_DECISION_RE = re.compile(r"^\s*DECISION\s*:\s*\n?\s*(.+)$", re.MULTILINE)
_META_TITLES = frozenset({"decision", "meta review", "meta-review", "metareview", "paper decision"})


def parse_review_record(raw: Any, *, source: str) -> PaperReviews:
    """Validate one paper's JSON record and turn it into `PaperReviews`.

    Raises `InvalidArgument` naming `source`, the offending field (e.g. `reviews[2].comments`) and what
    was expected.
    """
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"{source}: expected a JSON object for the paper record, got {_type_name(raw)}")
    try:
        record = RawPaperRecord.model_validate(raw)
    except ValidationError as exc:
        raise InvalidArgument(_describe_validation_error(source, exc)) from None
    official = [r for r in record.reviews if _is_official(r)]
    reviews = [_human_review(r, f"R{i}") for i, r in enumerate(official, start=1)]
    return PaperReviews(
        paper_id=record.id,
        title=" ".join(record.title.split()),
        abstract=record.abstract.strip(),
        accepted=record.accepted,
        decision=_decision(record.reviews) or _top_level_decision(record),
        reviews=reviews,
        source=source,
        keywords=list(record.keywords),
    )


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _describe_validation_error(source: str, exc: ValidationError) -> str:
    """First pydantic error as "<source>: field 'reviews[2].comments' must be a string, got int"."""
    err = exc.errors()[0]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    if err["type"] == "missing":
        return f"{source}: field '{where}' is missing; {_EXPECTED_FIELD.get(where, 'it is required')}"
    expected = _EXPECTED_BY_ERROR.get(err["type"], err["msg"].lower())
    return f"{source}: field '{where}' {expected}, got {_type_name(err.get('input'))}"


_EXPECTED_FIELD = {
    "id": "expected the paper id as a non-empty string",
    "reviews": "expected a list of review objects",
}
_EXPECTED_BY_ERROR = {
    "string_type": "must be a string",
    "list_type": "must be a list",
    "model_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "value_error": "must not be empty",
}


def _is_official(review: RawReview) -> bool:
    """Official reviews: not meta-reviews, not "Decision" notes, and with some text."""
    if review.is_meta_review or (review.title or "").strip().lower() in _META_TITLES:
        return False
    return bool(review.comments.strip())


def _decision(reviews: Iterable[RawReview]) -> str | None:
    """The decision text of the meta-review ("Accept (poster)"), from its DECISION: section or from a
    textual RECOMMENDATION; None when there is no meta-review."""
    for review in reviews:
        if not review.is_meta_review and (review.title or "").strip().lower() not in _META_TITLES:
            continue
        m = _DECISION_RE.search(review.comments)
        if m:
            return m.group(1).strip()
        recommendation = (review.model_extra or {}).get("RECOMMENDATION")
        if isinstance(recommendation, str) and not _NUMBER_RE.match(recommendation):
            return recommendation.strip()
    return None


def _top_level_decision(record: RawPaperRecord) -> str | None:
    """Some dumps carry the decision as a top-level "decision" string instead of a meta-review."""
    value = (record.model_extra or {}).get("decision")
    return value.strip() if isinstance(value, str) and value.strip() else None


def _human_review(review: RawReview, reviewer_id: str) -> HumanReview:
    return HumanReview(
        reviewer_id=reviewer_id,
        text=review.comments,
        sections=split_sections(review.comments),
        scores=_scores(review.model_extra or {}),
        title=review.title,
    )


def _scores(extra: Mapping[str, Any]) -> dict[str, ScoreValue]:
    """Upper-case keys with a scalar value; numeric strings ("4", "8: Top 50% ...") become numbers."""
    scores: dict[str, ScoreValue] = {}
    for key, value in extra.items():
        if key.upper() != key or key in _NON_SCORE_KEYS or isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            scores[key] = value
        elif isinstance(value, str) and value.strip():
            scores[key] = _score_from_text(value)
    return scores


def _score_from_text(value: str) -> ScoreValue:
    m = _NUMBER_RE.match(value) or _LEADING_SCORE_RE.match(value)
    if not m:
        return value.strip()
    number = float(m.group(1))
    return int(number) if number.is_integer() and "." not in m.group(1) else number


# --- sections ------------------------------------------------------------------------------------------

_KNOWN_SECTIONS = {
    "summary": "summary",
    "summary of the paper": "summary",
    "paper summary": "summary",
    "strengths and weaknesses": "strengths_and_weaknesses",
    "strength and weaknesses": "strengths_and_weaknesses",
    "strengths and weakness": "strengths_and_weaknesses",
    "strength and weakness": "strengths_and_weaknesses",
    "strengths": "strengths",
    "strength": "strengths",
    "weaknesses": "weaknesses",
    "weakness": "weaknesses",
    "questions": "questions",
    "question": "questions",
    "questions for authors": "questions",
    "questions for the authors": "questions",
    "limitations": "limitations",
    "limitation": "limitations",
}
# A header alone on its line: "SUMMARY:", "CLARITY, QUALITY, NOVELTY AND REPRODUCIBILITY:".
_HEADER_LINE_RE = re.compile(r"^[ \t]*([A-Z][A-Z ,&/'()\-]{2,80}?)[ \t]*[:：][ \t]*$")
# A known header with its text on the same line: "SUMMARY: The paper ...".
_HEADER_INLINE_RE = re.compile(r"^[ \t]*([A-Z][A-Z ]{3,40}?)[ \t]*[:：][ \t]*(\S.*)$")
# Inside STRENGTHS AND WEAKNESSES an all-caps "PROS:" is a marker, not a new section.
_MARKER_WORDS_RE = re.compile(r"^(?:PROS|CONS|MINOR|MAJOR|STRENGTHS?|WEAKNESS(?:ES)?|CONCERNS?)\b")


def split_sections(comments: str) -> dict[str, str]:
    """Split review text at `UPPER CASE:` headers into {canonical_name: text}; {} when there are none.

    Unknown all-caps headers on their own line are sections too, named in lower snake case; a repeated
    header appends to its section. Text before the first header is kept under "preamble".
    """
    sections: dict[str, list[str]] = {}
    current: str | None = None
    preamble: list[str] = []
    for line in comments.replace("\r\n", "\n").split("\n"):
        header = _header(line, inside=current)
        if header is None:
            (sections[current] if current else preamble).append(line)
            continue
        current, rest = header
        sections.setdefault(current, [])
        if rest:
            sections[current].append(rest)
    if not sections:
        return {}
    texts = {"preamble": preamble, **sections} if "\n".join(preamble).strip() else sections
    return {name: "\n".join(lines).strip() for name, lines in texts.items()}


def _header(line: str, *, inside: str | None) -> tuple[str, str] | None:
    """(section, text on the header's line) when the line opens a section, else None."""
    m = _HEADER_LINE_RE.match(line) or _HEADER_INLINE_RE.match(line)
    if not m:
        return None
    name = m.group(1).strip()
    rest = m.group(2).strip() if m.re is _HEADER_INLINE_RE else ""
    if rest and name.lower() not in _KNOWN_SECTIONS:
        return None  # "NOTE: authors ran more experiments" inside a section is text (14irEkV01l)
    if inside in _POLAR_SECTIONS and _MARKER_WORDS_RE.match(name):
        return None
    return _canonical_section(name), rest


_POLAR_SECTIONS = frozenset({"strengths_and_weaknesses", "strengths", "weaknesses"})


def _canonical_section(name: str) -> str:
    key = " ".join(name.lower().replace("&", " and ").split())
    if key in _KNOWN_SECTIONS:
        return _KNOWN_SECTIONS[key]
    return re.sub(r"[^a-z0-9]+", "_", key).strip("_")


def section_kind(section: str) -> PointKind | None:
    """The kind every point of a section gets; None for STRENGTHS AND WEAKNESSES (decided per point)."""
    if section in {"summary", "summary_of_the_paper"}:
        return "summary"
    if section in {"strengths_and_weaknesses", "preamble", "review"}:
        return None
    for prefix, kind in _SECTION_KIND_PREFIXES:
        if section.startswith(prefix):
            return kind
    return "other"


_SECTION_KIND_PREFIXES: tuple[tuple[str, PointKind], ...] = (
    ("strength", "strength"),
    ("weakness", "weakness"),
    ("question", "question"),
    ("limitation", "limitation"),
)
