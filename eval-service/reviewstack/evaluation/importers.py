"""Reviews written elsewhere, imported as a system: the GPT-4o / GPT-4o-mini / Claude 3.5 Sonnet reviews of
500 ICLR 2022 papers from AI-Scientist's review benchmark (`llm_reviews/*.csv`).

One row per paper; `Strengths`, `Weaknesses` and `Questions` hold Python list literals of points (the
benchmark wrote `str(list)`), read with `ast.literal_eval`, which parses literals and never runs code.
The file name carries the lineage: `<model>_temp_<t>[_fewshot_N][_reflect_N][_ensemble_N]_pages_<p>.csv`.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import re
from pathlib import PurePosixPath
from typing import Any

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.errors import InvalidArgument
from reviewstack.evaluation.model import Exclusion, Point, Review, System

__all__ = ["COLUMN_ASPECTS", "import_llm_reviews_csv", "lineage_from_filename"]

# The benchmark's three point lists, mapped onto the 7-aspect schema the way data-prep tags human points
# (distill.embedded.assign_aspect): a strength with no specific topic is a reason for acceptance, a
# weakness a reason for rejection, and a question to the authors asks for a clarification or more work,
# which data-prep files under suggestions. Same keys on both sides keep per-aspect statistics comparable.
# Summary (a restatement of the paper) and Limitations (free text in 32 of Claude's rows) are not points
# the human set is tagged with, so they are not imported.
COLUMN_ASPECTS: dict[str, str] = {
    "Strengths": "acceptance",
    "Weaknesses": "rejection",
    "Questions": "suggestions",
}
_ID_COLUMN = "paper_id"
_KEPT_COLUMNS = ("Decision", "Overall", "Confidence")  # per-review lineage: what the model concluded
_NAME_RE = re.compile(
    r"^(?P<model>.+?)_temp_(?P<temp>\d+(?:_\d+)?)(?P<options>(?:_[a-z]+_\d+)*)_pages_(?P<pages>[a-z0-9]+)$"
)
_OPTION_RE = re.compile(r"_([a-z]+)_(\d+)")
_OPTION_NAMES = {"fewshot": "few_shot", "reflect": "reflections", "ensemble": "ensemble"}

assert set(COLUMN_ASPECTS.values()) <= set(AspectSchema.SEVEN.keys)


class _RowError(Exception):
    """Why one row cannot be imported; becomes an Exclusion."""


def import_llm_reviews_csv(data: bytes, source: str, name: str | None = None) -> System:
    """Read one benchmark CSV (`source` names it in errors and lineage). A malformed row is excluded with
    its row number and reason; a file that is no such CSV, or holds no usable row, is an error."""
    filename = PurePosixPath(source).name
    reader = csv.DictReader(io.StringIO(_decode(data, source), newline=""))
    _check_header(reader.fieldnames, source)
    reviews: dict[str, list[Review]] = {}
    exclusions: list[Exclusion] = []
    first_row: dict[str, int] = {}
    rows = 0
    try:
        for rows, row in enumerate(reader, start=1):
            where = f"{filename} row {rows} (line {reader.line_num})"
            paper_id = (row.get(_ID_COLUMN) or "").strip()
            try:
                review = _review(row, rows, len(reader.fieldnames or ()))
                if paper_id in first_row:
                    raise _RowError(f"paper {paper_id} already imported from row {first_row[paper_id]}")
            except _RowError as exc:
                exclusions.append(Exclusion(where, str(exc), paper_id))
                continue
            first_row[paper_id] = rows
            reviews[paper_id] = [review]
    except csv.Error as exc:
        raise InvalidArgument(
            f"{source} is not a readable CSV at line {reader.line_num} ({exc}); re-export it as UTF-8 CSV"
        ) from exc
    if not reviews:
        reasons = "; ".join(f"{e.what}: {e.reason}" for e in exclusions[:3]) or "it has no data rows"
        raise InvalidArgument(f"{source} holds no usable review ({reasons})")
    lineage: dict[str, Any] = {
        "source": "imported",
        "format": "AI-Scientist review_iclr_bench CSV",
        "file": filename,
        "sha256": hashlib.sha256(data).hexdigest(),
        "rows": rows,
        "imported": len(reviews),
        "aspect_schema": AspectSchema.SEVEN.value,
        "columns": dict(COLUMN_ASPECTS),
        **lineage_from_filename(filename),
    }
    return System(
        name=name or PurePosixPath(filename).stem,
        uri=source,
        kind="imported",
        reviews=reviews,
        lineage=lineage,
        exclusions=exclusions,
    )


def lineage_from_filename(filename: str) -> dict[str, Any]:
    """Model and prompting from a benchmark file name; a name in another form says so instead."""
    stem = PurePosixPath(filename).name.removesuffix(".csv")
    m = _NAME_RE.match(stem)
    if not m:
        return {
            "model": "unknown",
            "prompting": "unknown",
            "note": f"file name {filename!r} is not <model>_temp_<t>[_<option>_<n>…]_pages_<p>.csv",
        }
    options = {key: int(value) for key, value in _OPTION_RE.findall(m.group("options"))}
    return {
        "model": m.group("model"),
        "temperature": float(m.group("temp").replace("_", ".")),
        **{_OPTION_NAMES.get(key, key): value for key, value in options.items()},
        "pages": m.group("pages"),
        "prompting": "+".join(f"{key}_{value}" for key, value in options.items()) or "plain",
    }


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"{source} is not UTF-8 text (byte {exc.start}: {exc.reason}); re-export it as UTF-8 CSV"
        ) from exc


def _check_header(fieldnames: Any, source: str) -> None:
    if not fieldnames:
        raise InvalidArgument(
            f"{source} is empty: expected a header row with {_ID_COLUMN} and the point lists"
        )
    missing = [c for c in (_ID_COLUMN, *COLUMN_ASPECTS) if c not in fieldnames]
    if missing:
        raise InvalidArgument(
            f"{source} lacks the columns {', '.join(missing)} (it has {', '.join(map(str, fieldnames))}): "
            f"expected an AI-Scientist review CSV with {_ID_COLUMN}, {', '.join(COLUMN_ASPECTS)}"
        )


def _review(row: dict[str | None, Any], number: int, width: int) -> Review:
    if None in row or any(value is None for value in row.values()):
        fields = width + len(row.get(None) or ()) - sum(value is None for value in row.values())
        raise _RowError(f"has {fields} fields, the header {width}: a quote or separator is off")
    paper_id = row[_ID_COLUMN].strip()
    if not paper_id:
        raise _RowError(f"{_ID_COLUMN} is empty")
    points: list[Point] = []
    empty: list[str] = []
    for column, aspect in COLUMN_ASPECTS.items():
        items = _items(row[column], column)
        points.extend(Point(text, aspect) for text in items)
        if not items:
            empty.append(aspect)
    if not points:
        raise _RowError(f"empty review: {', '.join(COLUMN_ASPECTS)} hold no point")
    kept = {c.lower(): row[c].strip() for c in _KEPT_COLUMNS if c in row and row[c] and row[c].strip()}
    return Review(
        paper_id=paper_id,
        points=tuple(points),
        empty_aspects=tuple(empty),
        aspects=tuple(COLUMN_ASPECTS.values()),
        lineage={"row": number, **kept},
    )


def _items(raw: str, column: str) -> list[str]:
    """The points of one list cell; a blank cell is a list the model left out (no points)."""
    text = raw.strip()
    if not text:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise _RowError(
            f"{column} is not a Python list literal ({type(exc).__name__}: {exc}): {_excerpt(text)}"
        ) from None
    if not isinstance(value, list | tuple):
        raise _RowError(f"{column} is a {type(value).__name__}, not a list of points: {_excerpt(text)}")
    wrong = next((v for v in value if not isinstance(v, str)), None)
    if wrong is not None:
        raise _RowError(f"{column} holds a {type(wrong).__name__} ({wrong!r:.40}), not only strings")
    return [" ".join(item.split()) for item in value if item.strip()]


def _excerpt(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")
