"""Distillers: a paper's human reviews → review items per aspect (the fine-tuning target).

Two implementations behind one interface: `EmbeddedDistiller` (rules + sentence embeddings, no network,
the default) and `LLMDistiller` (an OpenAI-compatible endpoint, as the method's authors did with GPT-4).
The human points themselves — the evaluation's ground truth — come from `points.extract_points` either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from reviewstack.dataprep.reviews import HumanPoint, PaperReviews

ProgressFn = Callable[[int, int], None]  # (done, total)


@dataclass
class Distillation:
    """One paper's target: items per aspect key (empty list = nothing to say), or why there is none."""

    paper_id: str
    aspects: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


class Distiller(Protocol):
    def describe(self) -> dict[str, object]:
        """Name, version and parameters, recorded in the manifest."""
        ...

    def distill(
        self,
        papers: Sequence[PaperReviews],
        points: dict[str, list[HumanPoint]],
        progress: ProgressFn | None = None,
    ) -> dict[str, Distillation]:
        """Distil every paper; a paper that fails carries `error` instead of raising."""
        ...
