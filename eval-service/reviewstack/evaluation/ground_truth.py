"""data-prep's `ground_truth.jsonl` → the human reviews, one Review per reviewer.

One line per paper: its reviewers, and the points data-prep cut their reviews into, each with its
reviewer, section, kind and the aspect key data-prep assigned. Aspect None marks a plain summary
sentence ("The paper proposes X"): data-prep's own verdict that it is no review point, so it is left out
of the ground truth by default (a generated summary "hitting" it would say nothing about review quality),
and counted in the lineage.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from reviewstack.evaluation.model import Exclusion, Point, Review

__all__ = ["GroundTruth", "parse_ground_truth"]

FILE_NAME = "ground_truth.jsonl"


@dataclass
class GroundTruth:
    reviews: dict[str, list[Review]] = field(default_factory=dict)  # every paper, even one without points
    exclusions: list[Exclusion] = field(default_factory=list)
    summary_points: int = 0  # aspect-None points left out
    other_splits: int = 0  # papers of splits not asked for
    single_reviewer: dict[str, str] = field(default_factory=dict)  # paper → why no leave-one-out


def parse_ground_truth(
    data: bytes, aspect_keys: Collection[str], split: str | None, include_summaries: bool
) -> GroundTruth:
    truth = GroundTruth()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        truth.exclusions.append(Exclusion(FILE_NAME, f"not UTF-8 (byte {exc.start}): rebuild the dataset"))
        return truth
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{FILE_NAME} line {number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            truth.exclusions.append(Exclusion(where, f"not JSON ({exc})"))
            continue
        paper_id = row.get("paper_id") if isinstance(row, dict) else None
        if not isinstance(paper_id, str) or not paper_id or not isinstance(row.get("points"), list):
            truth.exclusions.append(Exclusion(where, "not a ground-truth row (paper_id and points expected)"))
            continue
        if paper_id in seen:
            truth.exclusions.append(
                Exclusion(where, f"paper {paper_id} appears twice; the first is kept", paper_id)
            )
            continue
        seen.add(paper_id)
        if split is not None and row.get("split") != split:
            truth.other_splits += 1
            continue
        truth.reviews[paper_id] = _paper(row, paper_id, aspect_keys, include_summaries, truth)
    return truth


def _paper(
    row: dict[str, Any],
    paper_id: str,
    aspect_keys: Collection[str],
    include_summaries: bool,
    truth: GroundTruth,
) -> list[Review]:
    """One Review per reviewer who made a point, in the order data-prep listed the reviewers."""
    listed = [r for r in row.get("reviewers") or [] if isinstance(r, dict) and r.get("reviewer_id")]
    scores = {str(r["reviewer_id"]): r.get("scores") for r in listed}
    by_reviewer: dict[str, list[Point]] = {reviewer: [] for reviewer in scores}
    summaries: dict[str, int] = {}
    for index, point in enumerate(row["points"]):
        problem = _problem(point, aspect_keys)
        if problem:
            truth.exclusions.append(Exclusion(f"{paper_id} point {index}", problem, paper_id))
            continue
        reviewer = point["reviewer_id"]
        by_reviewer.setdefault(reviewer, [])
        if point.get("aspect") is None and not include_summaries:
            summaries[reviewer] = summaries.get(reviewer, 0) + 1
            continue
        by_reviewer[reviewer].append(Point(" ".join(point["text"].split()), point.get("aspect")))
    truth.summary_points += sum(summaries.values())
    reviews = []
    for reviewer, points in by_reviewer.items():
        if not points:
            left = (
                f" ({summaries[reviewer]} summary sentences are no review points)"
                if summaries.get(reviewer)
                else ""
            )
            truth.exclusions.append(
                Exclusion(f"{paper_id} reviewer {reviewer}", f"no review point left{left}", paper_id)
            )
            continue
        lineage = {"split": row.get("split"), "decision": row.get("decision"), "scores": scores.get(reviewer)}
        reviews.append(Review(paper_id=paper_id, points=tuple(points), reviewer=reviewer, lineage=lineage))
    if len(reviews) < 2:
        truth.single_reviewer[paper_id] = (
            f"{len(reviews)} reviewer{'' if len(reviews) == 1 else 's'} with points: no other reviewer to "
            "score against (leave-one-out needs 2); the paper's points still score the systems"
        )
    return reviews


def _problem(point: Any, aspect_keys: Collection[str]) -> str | None:
    if not isinstance(point, dict):
        return "not a JSON object"
    if not isinstance(point.get("text"), str) or not point["text"].strip():
        return "has no text"
    if not isinstance(point.get("reviewer_id"), str) or not point["reviewer_id"]:
        return "has no reviewer_id"
    aspect = point.get("aspect")
    if aspect is not None and aspect not in aspect_keys:
        return f"aspect {aspect!r} is not one of the dataset's aspect keys ({', '.join(aspect_keys)})"
    return None
