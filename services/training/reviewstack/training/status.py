"""What a run says about itself: `runs/<run-id>/status.json` (written by the job at every logging step)
and the folders it has published (`best/`, `merged/`), read through the store.

The reading is lenient on purpose: a status.json from a newer job with extra fields, or a metric that
is null, must not make the controller lose track of a run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from reviewstack.common.errors import NotFound, ReviewStackError
from reviewstack.common.store import ArtifactStore

ARTIFACTS = ("best", "merged")  # folders a run publishes manifest-last


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}"


def spec_key(run_id: str) -> str:
    """Where a run's spec lives: written once, when the run id is first submitted."""
    return f"{run_prefix(run_id)}/spec.json"


@dataclass(frozen=True)
class JobStatus:
    """The parsed status.json; `state` is "" when the job has not written one yet."""

    state: str = ""
    step: int = 0
    total_steps: int = 0
    epoch: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    best_step: int | None = None
    best_val_loss: float | None = None
    message: str = ""
    updated_at: str = ""

    @classmethod
    def parse(cls, doc: Any) -> JobStatus:
        if not isinstance(doc, dict):
            return cls(message="status.json is not a JSON object")
        metrics = doc.get("metrics") if isinstance(doc.get("metrics"), dict) else {}
        best = doc.get("best") if isinstance(doc.get("best"), dict) else {}
        return cls(
            state=str(doc.get("state") or ""),
            step=_int(doc.get("step")),
            total_steps=_int(doc.get("total_steps")),
            epoch=_float(doc.get("epoch")),
            metrics={k: v for k, v in ((k, _float(v)) for k, v in metrics.items()) if v is not None},
            best_step=_int(best.get("step")) if best.get("step") is not None else None,
            best_val_loss=_float(best.get("val_loss")),
            message=str(doc.get("message") or ""),
            updated_at=str(doc.get("updated_at") or ""),
        )

    def all_metrics(self) -> dict[str, float]:
        """The latest metrics plus the best validation loss and its step (Run.metrics)."""
        out = dict(self.metrics)
        if self.best_val_loss is not None:
            out["best_val_loss"] = self.best_val_loss
        if self.best_step is not None:
            out["best_step"] = float(self.best_step)
        return out

    def describe(self) -> str:
        """One line for a progress display: loss, validation, speed."""
        parts = []
        if (loss := self.metrics.get("loss")) is not None:
            parts.append(f"loss {loss:.4f}")
        if (val := self.metrics.get("val_loss")) is not None:
            parts.append(f"val {val:.4f}")
        if self.best_val_loss is not None:
            parts.append(f"best {self.best_val_loss:.4f}@{self.best_step}")
        if (speed := self.metrics.get("tokens_per_s")) is not None:
            parts.append(f"{speed:,.0f} tok/s")
        return " · ".join(parts) or self.message


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_status(store: ArtifactStore, run_id: str) -> JobStatus:
    """status.json of a run; an empty JobStatus while the job has not written one."""
    try:
        data = store.get_bytes(f"{run_prefix(run_id)}/status.json")
    except NotFound:
        return JobStatus()
    except ReviewStackError as exc:  # a store hiccup must not end the run's tracking
        return JobStatus(message=f"status.json unreadable: {exc}")
    try:
        return JobStatus.parse(json.loads(data))
    except ValueError:
        return JobStatus(message="status.json is not JSON (being rewritten?)")


def published_artifacts(store: ArtifactStore, run_id: str) -> dict[str, str]:
    """best/ and merged/ → URI, for those whose manifest exists (a half-written folder does not count)."""
    found = {}
    for name in ARTIFACTS:
        prefix = f"{run_prefix(run_id)}/{name}"
        try:
            if store.is_published(prefix):
                found[name] = store.uri_for(prefix)
        except ReviewStackError:
            continue
    return found
