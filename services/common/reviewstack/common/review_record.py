"""What a review record says about its own form, read the same way wherever it is judged.

A record (`reviews/<system>/<paper-id>.json`, written by `reviewstack review --batch`) holds the review by
aspect, each flagged `empty` (declined with `<No related terms>`) or `missing` (never reached), and the
tokens the model wrote against the budget it had. The evaluation reports how many reviews are well formed;
an experiment chooses among trained candidates by the same test on the validation papers, so the two can
never disagree about what a finished review is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def reached_budget(record: Mapping[str, Any]) -> bool:
    """The review wrote as many tokens as it was allowed (`lineage.parameters.max_new_tokens`): a review
    that ends there was cut, even when its last aspect had begun. A record without the numbers (written
    before they were recorded) reads as not cut."""
    lineage = record.get("lineage")
    parameters = lineage.get("parameters") if isinstance(lineage, Mapping) else None
    if not isinstance(parameters, Mapping):
        return False
    budget, written = parameters.get("max_new_tokens"), record.get("generated_tokens")
    if not isinstance(budget, int) or not isinstance(written, int) or isinstance(written, bool):
        return False
    return 0 < budget <= written


def unwritten_aspects(record: Mapping[str, Any]) -> list[str]:
    """Names of the aspects the review never reached (flagged `missing`)."""
    review = record.get("review")
    aspects = review.get("aspects") if isinstance(review, Mapping) else None
    if not isinstance(aspects, list):
        return []
    return [str(a.get("name")) for a in aspects if isinstance(a, Mapping) and a.get("missing") is True]


def is_well_formed(record: Mapping[str, Any]) -> bool:
    """The format the model is trained to write: structured by aspects, every aspect written or declined,
    and the review ended by the model rather than by its budget."""
    review = record.get("review")
    if not isinstance(review, Mapping) or not review.get("aspects"):
        return False
    return not unwritten_aspects(record) and not reached_budget(record)


__all__ = ["is_well_formed", "reached_budget", "unwritten_aspects"]
