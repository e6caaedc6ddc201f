"""The container's entry script (manifests.POD_SCRIPT) run for real with sh and the real torchrun.

The training job is stood in for by STAND_IN_JOB, a few lines that report what torchrun gave them and
exit with a chosen status: these tests are about the script's process handling (exit status 2 kept
through torchrun for the podFailurePolicy, node rank from JOB_COMPLETION_INDEX, SIGTERM passed on),
not about training.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reviewstack.training.manifests import POD_SCRIPT

from ..conftest import free_port
from .conftest import BIN

STAND_IN_JOB = f"""#!{sys.executable}
import json, os, signal, sys, time
def stop(*_):
    print("stand-in job: SIGTERM, checkpoint saved", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
print("stand-in job:", json.dumps({{"rank": os.environ.get("RANK"), "world": os.environ.get("WORLD_SIZE"),
      "args": sys.argv[1:]}}), flush=True)
if os.environ.get("STAND_IN_SLEEP"):
    time.sleep(60)
sys.exit(int(os.environ.get("STAND_IN_EXIT", "0")))
"""


@pytest.fixture
def pod(tmp_path: Path):
    """Start the pod script like a container would: `sh -c SCRIPT train SPEC …` with the Job's env."""
    job = tmp_path / "stand-in-job"
    job.write_text(STAND_IN_JOB)
    job.chmod(0o755)

    def start(name: str, **env: str) -> subprocess.Popen[str]:
        full_env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",  # torchrun from .venv
            "TRAIN_COMMAND": str(job),
            "TRAIN_EXIT_MARKER": str(tmp_path / f"{name}.exit-2"),
            **env,
        }
        return subprocess.Popen(
            ["sh", "-c", POD_SCRIPT, "train", "s3://b/runs/r/spec.json", "lora.r=8"],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    return start


def _finish(proc: subprocess.Popen[str]) -> tuple[int, list[str]]:
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, [line for line in out.splitlines() if line.startswith("stand-in job")]


def test_single_process_passes_args_and_exit_status_straight_through(pod):
    for status in (0, 2, 7):
        code, lines = _finish(pod(f"single-{status}", STAND_IN_EXIT=str(status)))
        assert code == status
        assert lines == [
            'stand-in job: {"rank": null, "world": null, "args": ["s3://b/runs/r/spec.json", "lora.r=8"]}'
        ]


def test_a_stale_marker_from_an_earlier_attempt_does_not_turn_a_crash_into_exit_2(pod, tmp_path):
    (tmp_path / "stale.exit-2").write_text("")  # left by an attempt that exited 2 on a restarted pod
    code, _ = _finish(pod("stale", STAND_IN_EXIT="3"))
    assert code == 3


def test_torchrun_workers_and_nodes(pod):
    """One batch, run concurrently (each torchrun takes seconds to start):
    - 2 processes whose job exits 2: torchrun exits 1, yet the pod must exit 2 (the Job does not retry);
    - 2 nodes of 1 process: static rendezvous on MASTER_ADDR, node rank from JOB_COMPLETION_INDEX."""
    port = str(free_port())
    nodes = {"NNODES": "2", "NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    procs = {
        "bad-spec": pod("bad-spec", NPROC_PER_NODE="2", STAND_IN_EXIT="2"),
        "node-0": pod("node-0", JOB_COMPLETION_INDEX="0", **nodes),
        "node-1": pod("node-1", JOB_COMPLETION_INDEX="1", **nodes),
    }
    results = {name: _finish(proc) for name, proc in procs.items()}
    code, lines = results["bad-spec"]
    # the first worker to exit 2 makes torchrun stop the other, which may not have printed yet
    assert code == 2 and lines and all('"world": "2"' in line for line in lines), results["bad-spec"]
    for index in (0, 1):
        code, lines = results[f"node-{index}"]
        assert code == 0, results
        args = '["s3://b/runs/r/spec.json", "lora.r=8"]'
        assert lines == [f'stand-in job: {{"rank": "{index}", "world": "2", "args": {args}}}']


def test_sigterm_reaches_the_job_so_it_can_checkpoint(pod):
    proc = pod("sigterm", STAND_IN_SLEEP="1")
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the job is up once it has printed
    assert first.startswith("stand-in job"), first
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # what the kubelet sends to the container's PID 1 (sh)
    code, lines = _finish(proc)
    assert lines == ["stand-in job: SIGTERM, checkpoint saved"]
    assert code == 143
