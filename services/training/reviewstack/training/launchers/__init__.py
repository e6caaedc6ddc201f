"""Launchers: the one small interface between the controller and where a run executes.

    launcher.check(spec, resources)        # before anything is written: can this launcher run it?
    launcher.launch(spec, spec_uri, resources)
    launcher.poll(run_id) -> LaunchState   # cheap; called every poll interval
    launcher.cancel(run_id)                # stop it; the run keeps its checkpoints
    launcher.log_location(run_id)          # where a person reads its output

Each launcher owns its retry policy (a Kubernetes Job restarts pods by itself; the local launcher
restarts the process), so the controller only reads states. Exit status 2 from the job means a bad
spec or input and is never retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from reviewstack.common.runspec import TrainSpec
from reviewstack.training.settings import LauncherSettings
from reviewstack.training.specs import Resources

Phase = Literal["pending", "running", "succeeded", "failed", "cancelled"]
TERMINAL_PHASES = frozenset({"succeeded", "failed", "cancelled"})
BAD_INPUT_EXIT = 2  # the job's contract: bad spec or input, found in its preflight


@dataclass(frozen=True)
class LaunchState:
    """Where a launched run stands, as its launcher sees it."""

    phase: Phase
    message: str = ""
    attempts: int = 0  # launches so far (1 + restarts)
    exit_code: int | None = None  # of the last attempt, when known
    bad_input: bool = False  # failed with exit status 2: fix the spec, do not retry

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES


class Launcher(Protocol):
    """Runs training jobs somewhere; see the module docstring for the call order."""

    name: str

    def default_gpus(self, spec: TrainSpec) -> int: ...

    def check(self, spec: TrainSpec, resources: Resources) -> None: ...

    def launch(self, spec: TrainSpec, spec_uri: str, resources: Resources) -> None: ...

    def poll(self, run_id: str) -> LaunchState | None:
        """The run's state, or None when this launcher knows nothing of it."""
        ...

    def cancel(self, run_id: str) -> None: ...

    def log_location(self, run_id: str) -> str: ...


def make_launcher(settings: LauncherSettings) -> Launcher:
    """The launcher the settings name; the Kubernetes client is imported only when it is used."""
    if settings.launcher == "kubernetes":
        from reviewstack.training.launchers.kubernetes import KubernetesLauncher

        return KubernetesLauncher(settings)
    from reviewstack.training.launchers.local import LocalLauncher

    return LocalLauncher(settings)
