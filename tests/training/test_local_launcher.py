"""Unit tests of the local launcher's process handling: restarts, exit status 2, cancel (SIGTERM, then
SIGKILL), the process group, the log file.

The training job is stood in for by `sys.executable -c STAND_IN`, passed through the launcher's
test-only `command` argument: what is under test is how the launcher treats a process, not training
(the real job runs in test_service.py's end-to-end test).
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reviewstack.common.errors import FailedPrecondition
from reviewstack.common.runspec import validate_train_spec
from reviewstack.training.launchers import LaunchState
from reviewstack.training.launchers.local import LocalLauncher
from reviewstack.training.settings import LauncherSettings
from reviewstack.training.specs import Resources

from .conftest import spec_data

SPEC_URI = "/store/runs/run-a/spec.json"


def stand_in_launcher(tmp_path: Path, code: str, **settings: object) -> LocalLauncher:
    fields = {"local_log_dir": tmp_path / "logs", "cancel_grace_s": 10.0, **settings}
    return LocalLauncher(
        LauncherSettings(**fields),
        command=[sys.executable, "-c", textwrap.dedent(code)],
        gpus_available=0,
    )


def launch(launcher: LocalLauncher, run_id: str = "run-a") -> None:
    spec = validate_train_spec(spec_data("/d", "/o", run_id=run_id))
    launcher.launch(spec, SPEC_URI, Resources(0))


def wait_done(launcher: LocalLauncher, run_id: str = "run-a", timeout: float = 30) -> LaunchState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = launcher.poll(run_id)
        assert state is not None
        if state.terminal:
            return state
        time.sleep(0.05)
    raise AssertionError(f"run still {launcher.poll(run_id)} after {timeout} s")


def wait_for(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_success_logs_to_the_run_log(tmp_path):
    launcher = stand_in_launcher(
        tmp_path,
        "import os, sys; print('stand-in job read', sys.argv[1], repr(os.environ['CUDA_VISIBLE_DEVICES']))",
    )
    launch(launcher)
    state = wait_done(launcher)
    assert (state.phase, state.attempts, state.exit_code) == ("succeeded", 1, 0)
    log = Path(launcher.log_location("run-a"))
    assert log == tmp_path / "logs" / "run-a.log"
    text = log.read_text()
    assert "attempt 1" in text
    assert f"stand-in job read {SPEC_URI} ''" in text  # a CPU run hides the GPUs


def test_exit_status_2_is_a_bad_spec_and_never_retried(tmp_path):
    code = "import sys; print('base model /m is not a directory'); sys.exit(2)"
    launcher = stand_in_launcher(tmp_path, code, local_max_restarts=5)
    launch(launcher)
    state = wait_done(launcher)
    assert (state.phase, state.bad_input, state.attempts, state.exit_code) == ("failed", True, 1, 2)
    assert state.message.endswith("(exit status 2): base model /m is not a directory")  # the job's reason


def test_a_crash_is_restarted_until_the_job_succeeds(tmp_path):
    # the stand-in crashes on its first two attempts, as a job killed mid-run would, then finishes
    counter = tmp_path / "attempts"
    code = f"""
        import pathlib, sys
        counter = pathlib.Path({str(counter)!r})
        n = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(n))
        print("stand-in attempt", n)
        sys.exit(0 if n == 3 else 1)
    """
    launcher = stand_in_launcher(tmp_path, code, local_max_restarts=2)
    launch(launcher)
    state = wait_done(launcher)
    assert (state.phase, state.attempts) == ("succeeded", 3)
    text = Path(launcher.log_location("run-a")).read_text()
    assert text.count("restarting from the latest checkpoint") == 2
    assert "stand-in attempt 3" in text


def test_crashes_beyond_the_budget_fail_the_run(tmp_path):
    launcher = stand_in_launcher(tmp_path, "import sys; sys.exit(1)", local_max_restarts=1)
    launch(launcher)
    state = wait_done(launcher)
    assert (state.phase, state.attempts, state.exit_code, state.bad_input) == ("failed", 2, 1, False)
    assert state.message == "crashed 2 times (last exit status 1)"  # the job printed nothing


def test_cancel_lets_the_job_checkpoint_first(tmp_path):
    ready, saved = tmp_path / "ready", tmp_path / "checkpoint"
    code = f"""
        import pathlib, signal, sys, time
        def stop(*_):
            pathlib.Path({str(saved)!r}).write_text("saved")
            sys.exit(143)
        signal.signal(signal.SIGTERM, stop)
        pathlib.Path({str(ready)!r}).write_text("")
        time.sleep(120)
    """
    launcher = stand_in_launcher(tmp_path, code)
    launch(launcher)
    wait_for(ready)
    assert launcher.poll("run-a").phase == "running"
    started = time.monotonic()
    launcher.cancel("run-a")
    assert time.monotonic() - started < 5
    assert saved.read_text() == "saved"
    state = launcher.poll("run-a")
    assert (state.phase, state.exit_code) == ("cancelled", 143)


def test_cancel_kills_a_job_that_ignores_sigterm_and_its_whole_group(tmp_path):
    ready, grandchild = tmp_path / "ready", tmp_path / "grandchild.pid"
    code = f"""
        import pathlib, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # like a data-loader worker: a child of the job that must not outlive it
        child = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                                  "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
        pathlib.Path({str(grandchild)!r}).write_text(str(child.pid))
        pathlib.Path({str(ready)!r}).write_text("")
        time.sleep(120)
    """
    launcher = stand_in_launcher(tmp_path, code, cancel_grace_s=0.5)
    launch(launcher)
    wait_for(ready)
    started = time.monotonic()
    launcher.cancel("run-a")
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 5, elapsed
    assert launcher.poll("run-a").phase == "cancelled"
    assert not _alive(int(grandchild.read_text()))


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper is dead for our purpose)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state == "Z":
            return False
        time.sleep(0.05)
    return True


def test_one_process_per_run_id_and_relaunch_after_it_ended(tmp_path):
    ready = tmp_path / "ready"
    launcher = stand_in_launcher(
        tmp_path,
        f"import pathlib, time; pathlib.Path({str(ready)!r}).touch(); time.sleep(120)",
        cancel_grace_s=2,
    )
    launch(launcher)
    wait_for(ready)
    with pytest.raises(FailedPrecondition, match="run-a is already running here"):
        launch(launcher)
    launcher.cancel("run-a")
    launch(launcher)  # the same run id again: a resubmitted run resumes from its checkpoints
    assert launcher.poll("run-a").phase == "running"
    launcher.cancel("run-a")
    assert launcher.poll("unknown") is None


def test_a_missing_entry_point_is_reported_before_launch(tmp_path):
    launcher = LocalLauncher(
        LauncherSettings(train_command="reviewstack-train-not-installed", local_log_dir=tmp_path),
        gpus_available=0,
    )
    spec = validate_train_spec(spec_data("/d", "/o"))
    with pytest.raises(FailedPrecondition, match="'reviewstack-train-not-installed' is not on PATH"):
        launcher.check(spec, Resources(0))
    assert os.listdir(tmp_path) == []
