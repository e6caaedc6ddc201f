"""What a run tells the outside world while it trains: `metrics.jsonl` (one row per logging step) and
`status.json` (the latest state), both in the run folder of the store, where the Training service,
kubectl users and the CLI read them."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from reviewstack.common.errors import NotFound
from reviewstack.common.store import ArtifactStore


class RunReporter:
    """Keeps the rows in memory and rewrites both objects at most every `interval_s` (S3 cannot append)."""

    def __init__(
        self,
        store: ArtifactStore,
        run_prefix: str,
        total_steps: int,
        enabled: bool = True,
        interval_s: float = 5.0,
    ) -> None:
        self.store, self.prefix, self.total_steps = store, run_prefix, total_steps
        self.enabled, self.interval_s = enabled, interval_s
        self.rows: list[dict[str, Any]] = []
        self.latest: dict[str, Any] = {}
        self.best: dict[str, Any] | None = None
        self._last_write = 0.0

    def resume(self, step: int) -> None:
        """Keep the rows of an earlier attempt up to the step the run resumes from."""
        try:
            text = self.store.get_bytes(f"{self.prefix}/metrics.jsonl").decode()
        except NotFound:
            return
        self.rows = [row for row in map(json.loads, text.splitlines()) if row.get("step", 0) <= step]

    def log(self, row: dict[str, Any], *, force: bool = False) -> None:
        self.rows.append(row)
        self.latest.update({k: v for k, v in row.items() if k != "step"})
        self.write("running", step=row.get("step", 0), force=force)

    def write(self, state: str, step: int = 0, message: str = "", *, force: bool = True) -> None:
        if not self.enabled or (not force and time.monotonic() - self._last_write < self.interval_s):
            return
        self._last_write = time.monotonic()
        self.store.put_bytes(
            f"{self.prefix}/metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.rows).encode()
        )
        status = {
            "state": state,
            "step": step,
            "total_steps": self.total_steps,
            "epoch": self.latest.get("epoch"),
            "metrics": self.latest,
            "best": self.best,
            "message": message,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.store.put_bytes(f"{self.prefix}/status.json", json.dumps(status, indent=2).encode())
