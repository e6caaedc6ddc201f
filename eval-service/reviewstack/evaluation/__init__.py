"""review-stack's evaluation: how many of the points human reviewers raised a system's reviews hit.

`match_points(generated, reference)` is the default matcher's one-call API; the rest is the service's.
"""

from __future__ import annotations

from typing import Any

__all__ = ["match_points"]


def __getattr__(name: str) -> Any:  # the matcher loads a model: import it only when asked for
    if name == "match_points":
        from reviewstack.evaluation.matching import match_points

        return match_points
    raise AttributeError(name)
