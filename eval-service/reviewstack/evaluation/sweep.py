"""The refusal-penalty sweep: systems that are the same model and settings decoded at several λ, and how
their empty-aspect rate and hits move with λ.

λ is read from lineage, never from a system's name: the review records carry it (review lineage
`parameters.refusal_penalty`), so a sweep cannot be assembled from systems that only look alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from reviewstack.evaluation.model import System

PENALTY_KEY = "refusal_penalty"
# Lineage fields that may differ between the runs of one sweep: λ itself, the sampling seed, and where
# the model was served (one model behind two deployments is still one model).
_FREE = frozenset({PENALTY_KEY, "seed", "backend"})
# What a record says about itself rather than about how it was made: never part of a sweep's settings
# (two papers' records can agree on them by chance, and two runs never do).
_PER_RECORD = frozenset(
    {"system", "created", "source", "record", "warnings", "prompt_tokens", "generated_tokens"}
)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _common(lineages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The flattened fields every lineage agrees on."""
    flat = [_flatten(lineage) for lineage in lineages]
    first = flat[0]
    return {k: v for k, v in first.items() if all(k in f and f[k] == v for f in flat[1:])}


def _review_lineages(system: System) -> list[Mapping[str, Any]]:
    return [r.lineage for reviews in system.reviews.values() for r in reviews if r.lineage]


def review_lineage(system: System, papers: Sequence[str]) -> dict[str, Any]:
    """What the reviews of `papers` record about how they were made: the fields they all share (model,
    prompt version, decoding settings, λ), and the names of those that differ from review to review (the
    full records stay at the system's URI)."""
    lineages = [r.lineage for p in papers for r in system.reviews.get(p, []) if r.lineage]
    if not lineages:
        return {"common": {}, "varies": []}
    common = _common(lineages)
    varies = sorted({k for lineage in lineages for k in _flatten(lineage)} - set(common))
    return {"common": dict(sorted(common.items())), "varies": varies}


def _penalty_in(lineage: Mapping[str, Any]) -> float | None:
    for key, value in _flatten(lineage).items():
        if (
            key.rsplit(".", 1)[-1] == PENALTY_KEY
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            return float(value)
    return None


def refusal_penalty(system: System) -> float | None:
    """λ of a system: from its own lineage, else the one value all its reviews' lineages agree on.
    None when there is none, or when its reviews were decoded at different λ (not one sweep point)."""
    found = _penalty_in(system.lineage)
    if found is None and (lineages := _review_lineages(system)):
        found = _penalty_in(_common(lineages))
    return found


def settings(system: System) -> dict[str, Any]:
    """What made the reviews, apart from λ: the review lineages' common fields (the system's own lineage
    when its reviews carry none), less the fields a sweep may vary."""
    lineages = _review_lineages(system)
    common = _common(lineages) if lineages else _flatten(system.lineage)
    return {
        k: v
        for k, v in sorted(common.items())
        if k.rsplit(".", 1)[-1] not in _FREE and k.split(".", 1)[0] not in _PER_RECORD
    }


def penalty_sweeps(
    systems: Sequence[System], results: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Group systems whose settings differ only in λ; a group with at least two distinct λ is a sweep.

    `results[name]` holds a system's `overall` metrics and `statistics`; each sweep point carries the
    numbers a λ plot needs, sorted by λ.
    """
    groups: dict[str, list[tuple[float, System]]] = {}
    keys: dict[str, dict[str, Any]] = {}
    for system in systems:
        penalty = refusal_penalty(system)
        if penalty is None or system.kind == "human":
            continue
        key_dict = settings(system)
        key = json.dumps(key_dict, sort_keys=True, default=str)
        groups.setdefault(key, []).append((penalty, system))
        keys[key] = key_dict
    sweeps = []
    for key, members in groups.items():
        if len({p for p, _ in members}) < 2:
            continue
        points = []
        for penalty, system in sorted(members, key=lambda m: (m[0], m[1].name)):
            overall, statistics = results[system.name]["overall"], results[system.name]["statistics"]
            points.append(
                {
                    "system": system.name,
                    PENALTY_KEY: penalty,
                    "empty_aspect_rate": statistics.get("empty_aspect_rate"),
                    "empty_aspects_per_review": statistics.get("empty_aspects_per_review", {}).get("mean"),
                    "missing_aspect_rate": statistics.get("missing_aspect_rate"),
                    "items_per_review": statistics["items_per_review"]["mean"],
                    **{m: overall[m] for m in ("hits", "recall", "precision", "f1")},
                }
            )
        sweeps.append({"settings": keys[key], "points": points})
    return sweeps
