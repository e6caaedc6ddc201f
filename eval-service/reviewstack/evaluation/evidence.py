"""`points.json`: the texts an evaluation's match indices point into, kept next to its report.

report.json records, per paper and system, the matches as `[generated, reference, score]`: indices into
the review's points and into the paper's human points (every reviewer's, in the loader's order), but not
the points themselves. Those live in the inputs (a system's review folder, a dataset version), which are
read through loaders that may change and may be gone by the time someone asks *which* human point a
review hit. So the evaluation writes the point texts once, in exactly the order the indices refer to,
before report.json (whose presence means the evaluation is complete); `ComparePaper` reads them back to
show two systems' reviews of a paper side by side.

The format is private to the evaluation service: clients see it only through that RPC, so it may change
with the service. `FORMAT` names its version, and `read` refuses any other (the evaluation is then to be
run again). One file per evaluation, compact JSON: each human point once per paper, each system's points
once; in size it is about what the reviews and the human points are in their own files.

    {"format": "reviewstack.evaluation.points/1", "eval_id": "20260101-120000-ab12cd34",
     "papers": {"<paper id>": {
         "human": [{"text": "…", "aspect": "rejection" | null, "reviewer": "R1"}, …],  # matches' "reference"
         "systems": {"<system>": {"points": [{"text": "…", "aspect": "idea" | null}, …],  # "generated"
                                  "empty_aspects": ["…"], "missing_aspects": ["…"]}}}}}

A system without a review of a paper (possible only when the caller named the papers) has no entry there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from reviewstack.common.errors import FailedPrecondition, NotFound
from reviewstack.common.store import ArtifactStore
from reviewstack.common.store.base import join_key
from reviewstack.evaluation.evaluate import reference_points
from reviewstack.evaluation.model import Point, System

FORMAT = "reviewstack.evaluation.points/1"
FILE_NAME = "points.json"


def _point(point: Point) -> dict[str, Any]:
    return {"text": point.text, "aspect": point.aspect}


def build(report: Mapping[str, Any], systems: Sequence[System], human: System) -> dict[str, Any]:
    """The points of every paper of `report` (human and each of its systems'), from the very inputs it
    was computed from."""
    by_name = {s.name: s for s in systems}
    papers: dict[str, Any] = {}
    for paper in report["papers"]:
        reviews: dict[str, Any] = {}
        for entry in report["systems"]:
            mine = by_name[entry["name"]].reviews.get(paper)
            if not mine:
                continue
            review = mine[0]  # a system has one review per paper (evaluate checks it)
            reviews[entry["name"]] = {
                "points": [_point(p) for p in review.points],
                "empty_aspects": list(review.empty_aspects),
                "missing_aspects": list(review.missing_aspects),
            }
        papers[paper] = {
            "human": [{**_point(p), "reviewer": reviewer} for reviewer, p in reference_points(human, paper)],
            "systems": reviews,
        }
    return {"format": FORMAT, "eval_id": report.get("eval_id", ""), "papers": papers}


def write(points: Mapping[str, Any], store: ArtifactStore, prefix: str) -> str:
    """Write `prefix/points.json`; returns its URI."""
    data = json.dumps(points, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return store.put_bytes(join_key(prefix, FILE_NAME), data).uri


def read(store: ArtifactStore, prefix: str, what: str) -> dict[str, Any]:
    """`prefix/points.json`, checked to be this format; FailedPrecondition, naming `what` (the
    evaluation), when it is missing or not readable as such: the evaluation must then be run again."""
    again = "run the evaluation again (same systems and ground truth) to see its papers point by point"
    try:
        data = store.get_bytes(join_key(prefix, FILE_NAME))
    except NotFound:
        raise FailedPrecondition(
            f"{what} has no {FILE_NAME}: it was written by a version of the service that did not keep the"
            f" review points; {again}"
        ) from None
    try:
        points = json.loads(data)
    except ValueError as exc:
        raise FailedPrecondition(f"{what}: {FILE_NAME} is not JSON ({exc}); {again}") from exc
    if (
        not isinstance(points, dict)
        or points.get("format") != FORMAT
        or not isinstance(points.get("papers"), dict)
    ):
        found = points.get("format") if isinstance(points, dict) else None
        raise FailedPrecondition(f"{what}: {FILE_NAME} is format {found!r}, not {FORMAT!r}; {again}")
    return points


def paper_points(points: Mapping[str, Any], paper: str, what: str) -> dict[str, Any]:
    """One paper's entry (`human`, `systems`); FailedPrecondition when the file lacks it."""
    entry = points["papers"].get(paper)
    if not isinstance(entry, dict) or not isinstance(entry.get("human"), list):
        raise FailedPrecondition(
            f"{what}: {FILE_NAME} holds no points of paper {paper!r}, which its report scores; the files"
            " do not belong together: run the evaluation again"
        )
    return entry


__all__ = ["FILE_NAME", "FORMAT", "build", "paper_points", "read", "write"]
