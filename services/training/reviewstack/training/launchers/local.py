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

One process per run on this machine, whoever started it: a run holds an exclusive lock
(`<log dir>/<run-id>.lock`, flock) from launch to its end, and its processes inherit it, so it stays
held while they live even if the controller that started them is gone. Another controller sharing the
log folder sees the run as running (poll) and refuses to start it again.
"""

from __future__ import annotations

import contextlib
import fcntl
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
_KEEP_FINISHED = 1000
_LOCK_WAIT_S = 5.0  # for the processes of a run that just ended to die and drop the run's lock


@dataclass
class _Process:
    """One local run: the command it restarts with, and how its attempts went (guarded by `lock`)."""

    command: list[str]
    env: dict[str, str]
    spec_uri: str
    log_path: Path
    marker: Path
    lock_fd: int = -1  # the run's lock, held by this launcher until the run ends (and by the job)
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
            # the processes of our own ended run may take a moment to die and drop the lock
            lock_fd = self._take_lock(run_id, wait_s=_LOCK_WAIT_S if current is not None else 0.0)
            marker = log_path.with_suffix(".exit-2")
            command, env = self._command_for(spec_uri, resources, marker)
            run = _Process(
                command=command, env=env, spec_uri=spec_uri, log_path=log_path, marker=marker, lock_fd=lock_fd
            )
            self._runs[run_id] = run
            self._forget_finished()
        with run.lock:
            self._start(run_id, run)

    def _forget_finished(self) -> None:
        """Keep at most _KEEP_FINISHED ended runs (each holds its command and environment); a forgotten
        one polls as unknown, which is what the controller reads for a run it no longer follows.
        Called with self._lock held."""
        ended = [run_id for run_id, run in self._runs.items() if run.final is not None]
        for run_id in ended[: max(0, len(ended) - _KEEP_FINISHED)]:
            del self._runs[run_id]

    def _lock_path(self, run_id: str) -> Path:
        return self._log_path(run_id).with_suffix(".lock")

    def _take_lock(self, run_id: str, wait_s: float = 0.0) -> int:
        """The run's lock, waiting at most `wait_s`; FailedPrecondition while another process holds it."""
        path = self._lock_path(run_id)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot open the run's lock {path}: {exc.strerror}; set REVIEWSTACK_LOCAL_LOG_DIR to a "
                "writable folder"
            ) from exc
        deadline = time.monotonic() + wait_s
        while not _try_flock(fd):
            if time.monotonic() >= deadline:
                os.close(fd)
                raise FailedPrecondition(
                    f"run {run_id} is already running on this machine, started by another controller "
                    f"(its processes hold {path}; `fuser -v {path}` lists them); stop it there, or submit "
                    "under another run_id"
                )
            time.sleep(0.05)
        return fd

    def _held_elsewhere(self, run_id: str) -> bool:
        """Whether a process this launcher does not follow holds the run's lock (a run of another
        controller on this machine, or one that outlived the controller that started it)."""
        try:
            fd = os.open(self._lock_path(run_id), os.O_RDONLY)
        except OSError:
            return False
        try:
            return not _try_flock(fd)
        finally:
            os.close(fd)  # closing drops the lock if we took it

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
                    pass_fds=(run.lock_fd,),  # the job holds the run's lock while it lives
                )
            except OSError as exc:
                self._end(run, LaunchState("failed", f"cannot start {run.command[0]}: {exc}", run.attempts))
                raise FailedPrecondition(f"cannot start the training job ({run.command[0]}): {exc}") from exc
        log.info(
            "local run started", run_id=run_id, pid=run.proc.pid, attempt=run.attempts, log=str(run.log_path)
        )

    def poll(self, run_id: str) -> LaunchState | None:
        run = self._runs.get(run_id)
        if run is None:
            if self._held_elsewhere(run_id):
                lock = self._lock_path(run_id)
                return LaunchState("running", f"running in processes this controller did not start ({lock})")
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
                self._end(
                    run, LaunchState("cancelled", "cancelled; checkpoints are kept", run.attempts, code)
                )
            elif code == 0:
                self._end(run, LaunchState("succeeded", "", run.attempts, 0))
            elif code == BAD_INPUT_EXIT:
                reason = _last_line(run.log_path)
                message = "the training job refused its spec or input (exit status 2)" + (
                    f": {reason}" if reason else ""
                )
                self._end(run, LaunchState("failed", message, run.attempts, code, True))
            elif run.attempts <= self.settings.local_max_restarts:
                log.warning(
                    "local run crashed; restarting", run_id=run_id, exit_code=code, attempt=run.attempts
                )
                self._append(run, f"=== exit status {code}: restarting from the latest checkpoint\n")
                self._start(run_id, run)
                return LaunchState("running", f"restarted after exit status {code}", run.attempts, code)
            else:
                reason = _last_line(run.log_path)
                message = f"crashed {run.attempts} times (last exit status {code}"
                self._end(
                    run,
                    LaunchState(
                        "failed", message + (f": {reason}" if reason else "") + ")", run.attempts, code
                    ),
                )
            return run.final

    @staticmethod
    def _end(run: _Process, state: LaunchState) -> None:
        """Record how the run ended and let go of its lock (what is left of its processes drops theirs
        as they die). Called with run.lock held."""
        run.final = state
        if run.lock_fd >= 0:
            os.close(run.lock_fd)
            run.lock_fd = -1

    def cancel(self, run_id: str, grace_s: float | None = None) -> None:
        """SIGTERM to the run's process group, SIGKILL after the grace period (default cancel_grace_s);
        returns once it is gone. A second call with grace_s=0 kills a run still saving its checkpoint."""
        run = self._runs.get(run_id)
        if run is None:
            if self._held_elsewhere(run_id):
                raise FailedPrecondition(
                    f"run {run_id} runs in processes this controller did not start; stop it from the "
                    f"controller that did (`fuser -v {self._lock_path(run_id)}` lists them)"
                )
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


def _try_flock(fd: int) -> bool:
    """Take an exclusive flock on `fd` without waiting; False while another open file holds one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


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
