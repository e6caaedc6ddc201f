"""A review record (`reviews/<system>/<paper-id>.json`, `reviewstack.common.review_record`) → a Review.

The record names each aspect by its full criterion text, as the model reads it; the evaluation counts by
aspect key, so the criterion is mapped back through the schemas. Anything a record gets wrong raises
`MalformedRecord` with the reason: the loader turns it into an Exclusion, never a silent drop.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from reviewstack.common.aspects import EMPTY_ASPECT, AspectSchema
from reviewstack.common.review_record import AspectEntry, InvalidRecord, ReviewRecord
from reviewstack.evaluation.model import Point, Review
from reviewstack.evaluation.splitting import split_points

__all__ = ["MalformedRecord", "review_from_record"]

_LINEAGE_FIELDS = ("created", "source", "warnings", "prompt_tokens", "generated_tokens", "system")


class MalformedRecord(Exception):
    """Why a record cannot be read as a review."""


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _aspect_index() -> dict[str, tuple[str, frozenset[AspectSchema]]]:
    """Criterion text (or key) → (key, the schemas it belongs to). "Potential reasons for acceptance" is in
    both schemas; "Other suggestions …" only in the 7-aspect one."""
    index: dict[str, tuple[str, set[AspectSchema]]] = {}
    for schema in AspectSchema:
        for aspect in schema.aspects:
            for label in (aspect.criterion, aspect.key):
                index.setdefault(_normalise(label), (aspect.key, set()))[1].add(schema)
    return {label: (key, frozenset(schemas)) for label, (key, schemas) in index.items()}


_ASPECTS = _aspect_index()


def review_from_record(data: bytes, paper_id: str, lineage: Mapping[str, Any]) -> Review:
    """Parse one record; `paper_id` is what its file name says. Items of empty aspects are no points; a
    review without aspects (never parsed) is cut into points from its text, with aspect None."""
    try:
        record = ReviewRecord.from_json(data)
    except InvalidRecord as exc:
        raise MalformedRecord(str(exc)) from None
    if record.paper_id is not None and record.paper_id != paper_id:
        raise MalformedRecord(
            f"its paper_id {record.paper_id!r} does not match its file name {paper_id}.json"
        )
    own = record.model_dump(mode="json", include=set(_LINEAGE_FIELDS), exclude_unset=True)
    details = {**record.lineage, **own, **lineage}
    if record.review.aspects:
        return _structured(paper_id, record.review.aspects, details, record.reached_budget)
    points = tuple(Point(p) for p in split_points(record.review.text))
    if not points:
        raise MalformedRecord("empty review: no aspects and no text")
    return Review(paper_id=paper_id, points=points, lineage=details, cut_short=record.reached_budget)


def _structured(
    paper_id: str, aspects: list[AspectEntry], lineage: dict[str, Any], cut_short: bool
) -> Review:
    points: list[Point] = []
    keys: list[str] = []
    empty: list[str] = []
    missing: list[str] = []
    schemas = frozenset(AspectSchema)
    for number, aspect in enumerate(aspects, start=1):
        key, belongs_to = _aspect_key(aspect, number)
        if key in keys:
            raise MalformedRecord(f"aspect {key!r} appears twice")
        schemas &= belongs_to
        items = _content(aspect, key)
        keys.append(key)
        if items:
            points.extend(Point(item, key) for item in items)
        elif aspect.missing:
            missing.append(key)
        else:
            empty.append(key)
    if not schemas:
        raise MalformedRecord("its aspects mix the criteria of the 7- and the 4-aspect schema")
    schema = next(iter(schemas)).value if len(schemas) == 1 else None
    return Review(
        paper_id=paper_id,
        points=tuple(points),
        empty_aspects=tuple(empty),
        missing_aspects=tuple(missing),
        aspects=tuple(keys),
        cut_short=cut_short,
        lineage={**lineage, "aspect_schema": schema},
    )


def _aspect_key(aspect: AspectEntry, number: int) -> tuple[str, frozenset[AspectSchema]]:
    name = aspect.name
    if not name.strip():
        raise MalformedRecord(f"aspect {number} has no name (the criterion text)")
    found = _ASPECTS.get(_normalise(name))
    if found is None:
        raise MalformedRecord(
            f"aspect {number}, {name[:60]!r}, is no criterion of the 7- or 4-aspect schema "
            "(reviewstack.common.aspects)"
        )
    return found


def _content(aspect: AspectEntry, key: str) -> list[str]:
    """The aspect's points: its items without the empty marker; checked against its `empty` flag."""
    content = [" ".join(i.split()) for i in aspect.items if i.strip() and i.strip() != EMPTY_ASPECT]
    for flag in ("empty", "missing"):
        if getattr(aspect, flag) and content:
            raise MalformedRecord(f"aspect {key!r} is marked {flag} but holds {len(content)} items")
    return content
