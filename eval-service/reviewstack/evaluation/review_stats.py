"""Statistics of the reviews themselves, before any matching: how much a system says, and how often it
declines to say anything about an aspect (the empty aspects the refusal penalty is meant to reduce).
Aspects a review never reached (cut at its token budget) are counted apart, as missing: counted as
empty they would read as refusals and hide a budget that is too small."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from reviewstack.common.aspects import FOUR_ASPECTS, SEVEN_ASPECTS
from reviewstack.evaluation.model import Review

_KNOWN_ORDER = list(dict.fromkeys(a.key for a in (*SEVEN_ASPECTS, *FOUR_ASPECTS)))


def order_aspects(keys: Iterable[str]) -> list[str]:
    """The method's aspect order where the keys are known (a reader expects 'idea' before 'other'),
    unknown keys after them, alphabetically."""
    keys = set(keys)
    known = [k for k in _KNOWN_ORDER if k in keys]
    return known + sorted(keys - set(known))


def distribution(values: Sequence[int]) -> dict[str, Any]:
    """Mean and counts: `counts[k]` reviews have value k (a list, so a plot needs no key parsing)."""
    if not values:
        return {"mean": None, "min": None, "max": None, "counts": []}
    counter = Counter(values)
    return {
        "mean": sum(values) / len(values),
        "min": min(values),
        "max": max(values),
        "counts": [counter.get(k, 0) for k in range(max(values) + 1)],
    }


def review_statistics(reviews: Sequence[Review]) -> dict[str, Any]:
    """Items per review and, for reviews structured by aspects, empty aspects per review and items and
    empty aspects per aspect. Free-text reviews get a note instead: zeros would read as "never empty"."""
    out: dict[str, Any] = {
        "reviews": len(reviews),
        "items_per_review": distribution([len(r.points) for r in reviews]),
        "cut_short_reviews": sum(r.cut_short for r in reviews),
    }
    structured = bool(reviews) and all(r.aspects for r in reviews)
    out["structured"] = structured
    if not structured:
        out["note"] = (
            "reviews are not structured by aspects, so empty aspects and per-aspect counts do not apply"
            if reviews
            else "no reviews"
        )
        return out
    aspects = order_aspects(k for r in reviews for k in r.aspects)
    empties = [len(set(r.empty_aspects)) for r in reviews]
    missing = [len(set(r.missing_aspects)) for r in reviews]
    slots = sum(len(r.aspects) for r in reviews)
    out["aspects"] = aspects
    out["empty_aspects_per_review"] = distribution(empties)
    out["empty_aspect_rate"] = sum(empties) / slots if slots else None
    out["missing_aspects_per_review"] = distribution(missing)
    out["missing_aspect_rate"] = sum(missing) / slots if slots else None
    # the format the model was trained to write: every aspect written or declined, and the review ended
    # by the model, not by its budget (a review cut inside its last aspect has every aspect but no end)
    out["well_formed_reviews"] = sum(
        1 for r, m in zip(reviews, missing, strict=True) if m == 0 and not r.cut_short
    )
    out["per_aspect"] = {}
    for key in aspects:
        having = [r for r in reviews if key in r.aspects]
        items = sum(1 for r in having for p in r.points if p.aspect == key)
        empty = sum(1 for r in having if key in r.empty_aspects)
        never = sum(1 for r in having if key in r.missing_aspects)
        out["per_aspect"][key] = {
            "reviews": len(having),
            "items": items,
            "items_per_review": items / len(having),
            "empty": empty,
            "empty_rate": empty / len(having),
            "missing": never,
            "missing_rate": never / len(having),
        }
    return out
