"""How a run reads to a person: its progress line while it trains and its summary when it ends.

Everything here takes a `Run` message, so a local run (`reviewstack train run`) and one on a server
(`submit --watch`, `status`) look the same.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from reviewstack.common.progress import ProgressDisplay
from reviewstack.v1 import operations_pb2, training_pb2

TERMINAL = (
    operations_pb2.OPERATION_STATE_SUCCEEDED,
    operations_pb2.OPERATION_STATE_FAILED,
    operations_pb2.OPERATION_STATE_CANCELLED,
)


def state_name(run: training_pb2.Run) -> str:
    return operations_pb2.OperationState.Name(run.operation.state).removeprefix("OPERATION_STATE_").lower()


def is_finished(run: training_pb2.Run) -> bool:
    return run.operation.state in TERMINAL


def show_progress(progress: ProgressDisplay, run: training_pb2.Run) -> None:
    p = run.operation.progress
    progress.update(p.stage or "pending", p.done, p.total, p.message)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def summary_table(run: training_pb2.Run) -> Table:
    """State, steps, final and best losses, where the outputs are."""
    m = dict(run.metrics)
    p = run.operation.progress
    table = Table("", "", show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_row("steps", f"{p.done} / {p.total}" if p.total else str(p.done))
    table.add_row("final loss", _fmt(m.get("loss")))
    if "val_loss" in m:
        table.add_row("last val loss", _fmt(m.get("val_loss")))
    best = m.get("best_val_loss")
    table.add_row("best val loss", f"{_fmt(best)} at step {int(m['best_step'])}" if best is not None else "—")
    if "tokens_per_s" in m:
        table.add_row("tokens/s", f"{m['tokens_per_s']:,.0f}")
    if "peak_mem_gib" in m:
        predicted = (
            f" (predicted {m['predicted_peak_gib']:.1f}: layout.json)" if "predicted_peak_gib" in m else ""
        )
        table.add_row("peak memory", f"{m['peak_mem_gib']:.1f} GiB{predicted}")
    for name in ("best", "merged"):
        table.add_row(f"{name}/", run.artifacts.get(name, "not published"))
    table.add_row("run folder", run.uri)
    if run.attempts > 1:
        table.add_row("attempts", f"{run.attempts} (restarts resumed from checkpoints)")
    if run.log:
        table.add_row("log", run.log)
    return table


def print_summary(console: Console, run: training_pb2.Run) -> None:
    state = state_name(run)
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(state, "cyan")
    console.print(f"[bold {colour}]run {run.run_id} {state}[/]")
    if run.operation.error.message:
        console.print(f"[red]{run.operation.error.message}[/]", soft_wrap=True)
    elif state == "cancelled" and run.operation.progress.message:
        console.print(run.operation.progress.message, soft_wrap=True)
    console.print(summary_table(run), soft_wrap=True)


def runs_table(runs: list[training_pb2.Run]) -> Table:
    table = Table("run", "state", "step", "loss", "best val (step)", "merged")
    for run in runs:
        m = dict(run.metrics)
        p = run.operation.progress
        best = m.get("best_val_loss")
        table.add_row(
            run.run_id,
            state_name(run),
            f"{p.done}/{p.total}" if p.total else str(p.done),
            _fmt(m.get("loss")),
            f"{_fmt(best)} ({int(m['best_step'])})" if best is not None else "—",
            "yes" if "merged" in run.artifacts else "",
        )
    return table
