"""Progress shown to people: one rich progress bar per stage, for local work and for remote operations.

Long work in review-stack reports `update(stage, done, total, message)`; the same calls feed a gRPC
operation on a server and this display in a terminal, so a local run and a remote one look alike.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class ProgressDisplay:
    """Context manager; `update` is safe to call often (rich throttles redraws)."""

    def __init__(self, console: Console | None = None, transient: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[message]}"),
            console=self.console,
            transient=transient,
        )
        self._tasks: dict[str, TaskID] = {}
        self._current: str | None = None

    def __enter__(self) -> ProgressDisplay:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def update(self, stage: str, done: int = 0, total: int = 0, message: str = "") -> None:
        if stage not in self._tasks:
            if self._current is not None:  # a new stage starts: mark the previous one complete
                previous = self._tasks[self._current]
                finished = max(self._progress.tasks[previous].completed, 1)
                self._progress.update(previous, total=finished, completed=finished, message="")
            # names and messages are text, not markup: "train:lora[learning_rate=0.001]" stays as it is
            self._tasks[stage] = self._progress.add_task(escape(stage), total=total or None, message="")
            self._current = stage
        self._progress.update(
            self._tasks[stage], completed=done, total=total or None, message=escape(message[:60])
        )

    def check_cancelled(self) -> None:
        """Local runs are cancelled with Ctrl-C, which interrupts the work directly."""
