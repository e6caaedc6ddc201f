"""The embedded launcher: a run is a process on this machine, its output in `<log dir>/<run-id>.log`.

One GPU or none: the job's own entry point (`reviewstack-train SPEC`). Several GPUs: the same
entry script as a Kubernetes pod (manifests.POD_SCRIPT), which runs torchrun and keeps exit status 2
visible through it. The process gets its own session, so Ctrl-C in the terminal that started the
controller does not reach it, and a cancel signals the whole group (torchrun, its workers, their data
loaders) at once: SIGTERM, then SIGKILL once `cancel_grace_s` has passed.

A crash (any exit status but 0 and 2) restarts the process up to `local_max_restarts` times; the job
resumes from its latest complete checkpoint. Supported: one machine, any number of its GPUs.
Not supported: several nodes (use the kubernetes launcher), runs surviving a restart of this process
(the process keeps running, but this launcher no longer follows it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from reviewstack.common.errors import FailedPrecondition
from reviewstack.common.logging import get_logger
from reviewstack.common.runspec import TrainSpec
from reviewstack.training.launchers import BAD_INPUT_EXIT, LaunchState
from reviewstack.training.manifests import POD_SCRIPT
from reviewstack.training.preflight import check_local_hardware, visible_gpus
from reviewstack.training.settings import LauncherSettings
from reviewstack.training.specs import Resources

log = get_logger(__name__)


@dataclass
class _Process:
    """One local run: the command it restarts with, and how its attempts went (guarded by `lock`)."""

    command: list[str]
    env: dict[str, str]
    spec_uri: str
    log_path: Path
    marker: Path
    proc: subprocess.Popen[bytes] | None = None
    attempts: int = 0
    exit_code: int | None = None
    cancelled: bool = False
    final: LaunchState | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class LocalLauncher:
    """Runs training jobs as child processes of this one (see the module docstring)."""

    name = "local"

    def __init__(
        self,
        settings: LauncherSettings,
        *,
        command: list[str] | None = None,
        gpus_available: int | None = None,
    ) -> None:
        self.settings = settings
        # `command` replaces the training job's entry point: for tests of the process handling only
        self._command = command
        self._gpus = gpus_available if gpus_available is not None else settings.local_gpus
        self._runs: dict[str, _Process] = {}
        self._lock = threading.Lock()

    @property
    def gpus_available(self) -> int:
        return visible_gpus() if self._gpus is None else self._gpus

    def default_gpus(self, spec: TrainSpec) -> int:
        """One GPU when there is one and the spec may use it; several only when asked (--gpus)."""
        return 0 if spec.device == "cpu" else min(1, self.gpus_available)

    def check(self, spec: TrainSpec, resources: Resources) -> None:
        check_local_hardware(spec, resources.gpus_per_node, self.gpus_available, resources.nodes)
        if self._command is None and self._entry_point() is None:
            raise FailedPrecondition(
                f"the training job's entry point {self.settings.train_command!r} is not on PATH: install "
                "it (`pip install -e training-job`) or set REVIEWSTACK_TRAIN_COMMAND"
            )

    def _entry_point(self) -> str | None:
        """The job's executable: on PATH, or beside this interpreter (a venv used without activating it)."""
        name = self.settings.train_command
        return shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))

    def log_location(self, run_id: str) -> str:
        return str(self._log_path(run_id))

    def _log_path(self, run_id: str) -> Path:
        return (self.settings.local_log_dir / f"{run_id}.log").absolute()

    def launch(self, spec: TrainSpec, spec_uri: str, resources: Resources) -> None:
        run_id = spec.run_id
        with self._lock:
            current = self._runs.get(run_id)
            if current is not None and current.final is None:
                raise FailedPrecondition(f"run {run_id} is already running here; cancel it first")
            log_path = self._log_path(run_id)
            try:
                log_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise FailedPrecondition(
                    f"cannot create the log folder {log_path.parent}: {exc.strerror}; "
                    "set REVIEWSTACK_LOCAL_LOG_DIR to a writable folder"
                ) from exc
            marker = log_path.with_suffix(".exit-2")
            command, env = self._command_for(spec_uri, resources, marker)
            run = _Process(command=command, env=env, spec_uri=spec_uri, log_path=log_path, marker=marker)
            self._runs[run_id] = run
        with run.lock:
            self._start(run_id, run)

    def _command_for(
        self, spec_uri: str, resources: Resources, marker: Path
    ) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        entry = self._command or [self._entry_point() or self.settings.train_command]
        if resources.gpus_per_node <= 1:
            if resources.gpus_per_node == 0:
                env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU run must not grab a GPU another run uses
            return [*entry, spec_uri], env
        env.update(
            NNODES="1",
            NPROC_PER_NODE=str(resources.gpus_per_node),
            TRAIN_EXIT_MARKER=str(marker),
            TRAIN_COMMAND=entry[0],
        )
        return ["sh", "-c", POD_SCRIPT, "train", *entry[1:], spec_uri], env

    def _start(self, run_id: str, run: _Process) -> None:
        """Start (or restart) the process, appending to the run's log. Called with run.lock held."""
        run.attempts += 1
        with open(run.log_path, "ab") as out:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"=== {stamp} attempt {run.attempts}: {run.command[0]} … {run.spec_uri}\n".encode())
            out.flush()
            try:
                run.proc = subprocess.Popen(
                    run.command,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=run.env,
                    start_new_session=True,  # its own process group: signalled as one, spared our Ctrl-C
                )
            except OSError as exc:
                run.final = LaunchState("failed", f"cannot start {run.command[0]}: {exc}", run.attempts)
                raise FailedPrecondition(f"cannot start the training job ({run.command[0]}): {exc}") from exc
        log.info(
            "local run started", run_id=run_id, pid=run.proc.pid, attempt=run.attempts, log=str(run.log_path)
        )

    def poll(self, run_id: str) -> LaunchState | None:
        run = self._runs.get(run_id)
        if run is None:
            return None
        with run.lock:
            if run.final is not None:
                return run.final
            assert run.proc is not None
            code = run.proc.poll()
            if code is None:
                return LaunchState("running", f"pid {run.proc.pid}", run.attempts)
            run.exit_code = code
            _signal_group(run.proc, signal.SIGKILL)  # what the attempt left behind must free its GPUs
            if run.cancelled:
                run.final = LaunchState("cancelled", "cancelled; checkpoints are kept", run.attempts, code)
            elif code == 0:
                run.final = LaunchState("succeeded", "", run.attempts, 0)
            elif code == BAD_INPUT_EXIT:
                reason = _last_line(run.log_path)
                message = "the training job refused its spec or input (exit status 2)" + (
                    f": {reason}" if reason else ""
                )
                run.final = LaunchState("failed", message, run.attempts, code, True)
            elif run.attempts <= self.settings.local_max_restarts:
                log.warning(
                    "local run crashed; restarting", run_id=run_id, exit_code=code, attempt=run.attempts
                )
                self._append(run, f"=== exit status {code}: restarting from the latest checkpoint\n")
                self._start(run_id, run)
                return LaunchState("running", f"restarted after exit status {code}", run.attempts, code)
            else:
                reason = _last_line(run.log_path)
                run.final = LaunchState(
                    "failed",
                    f"crashed {run.attempts} times (last exit status {code}"
                    + (f": {reason}" if reason else "")
                    + ")",
                    run.attempts,
                    code,
                )
            return run.final

    def cancel(self, run_id: str, grace_s: float | None = None) -> None:
        """SIGTERM to the run's process group, SIGKILL after the grace period (default cancel_grace_s);
        returns once it is gone. A second call with grace_s=0 kills a run still saving its checkpoint."""
        run = self._runs.get(run_id)
        if run is None:
            return
        with run.lock:
            if run.final is not None or run.proc is None:
                return
            run.cancelled = True
            proc = run.proc
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=self.settings.cancel_grace_s if grace_s is None else grace_s)
        except subprocess.TimeoutExpired:
            log.warning("local run ignored SIGTERM; killing it", run_id=run_id, pid=proc.pid)
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        self.poll(run_id)

    def _append(self, run: _Process, line: str) -> None:
        with open(run.log_path, "ab") as out:
            out.write(line.encode())


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(proc.pid, sig)  # the group id is the pid: start_new_session made it a leader


def _last_line(log_path: Path, limit: int = 400) -> str:
    """The job's last log line (it logs why it stopped last; our `===` markers skipped), shortened."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            text = f.read().decode(errors="replace")
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("=== ")]
    except OSError:
        return ""
    last = lines[-1] if lines else ""
    return last if len(last) <= limit else last[: limit - 1] + "…"
