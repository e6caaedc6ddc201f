"""The numbers a manifest reports about a dataset: token lengths, truncation, aspects."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.review_format import is_empty


def percentiles(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values, dtype=np.float64)
    stats = {f"p{q}": float(np.percentile(array, q)) for q in (5, 25, 50, 75, 90, 95, 99)}
    return {
        "min": float(array.min()),
        **stats,
        "max": float(array.max()),
        "mean": round(float(array.mean()), 2),
    }


def aspect_stats(records: Sequence[dict], schema: AspectSchema) -> dict[str, object]:
    """Items per aspect and the share of records in which each aspect is empty."""
    n = max(len(records), 1)

    def items(record: dict, key: str) -> int:
        values = record["aspects"][key]
        return 0 if is_empty(values) else len(values)

    per_aspect = {}
    for key in schema.keys:
        counts = [items(r, key) for r in records]
        per_aspect[key] = {
            "items_total": int(sum(counts)),
            "items_mean": round(sum(counts) / n, 3),
            "empty_share": round(sum(1 for c in counts if c == 0) / n, 4),
        }
    empties = [sum(1 for key in schema.keys if items(r, key) == 0) for r in records]
    return {
        "per_aspect": per_aspect,
        "empty_aspect_share": round(sum(empties) / (n * len(schema.keys)), 4),
        "empty_aspects_per_record": percentiles(empties),
        "items_per_record": percentiles([sum(items(r, k) for k in schema.keys) for r in records]),
    }
