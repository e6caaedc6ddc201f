"""A run id names one spec for good: SubmitRun never writes over runs/<run-id>/spec.json.

Real controllers over real stores (a local folder and the moto S3 server) and real launchers: the local
launcher runs stand-in job processes; the kubernetes launcher talks to FakeCluster (kube_fake.py), since
no API server can run here. Each controller is a fresh TrainingController, as another replica or a
restarted server would be: what it knows of a run comes from the store and the launcher, never from
memory. Concurrent submissions run in threads, aligned on a barrier.
"""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from reviewstack.common import errors
from reviewstack.common.runspec import TrainSpec, validate_train_spec
from reviewstack.common.store import ArtifactStore, open_store
from reviewstack.training import controller as controller_module
from reviewstack.training.controller import RunOperations, TrainingController
from reviewstack.training.launchers import kubernetes as launcher_module
from reviewstack.training.launchers.kubernetes import KubernetesLauncher
from reviewstack.training.launchers.local import LocalLauncher
from reviewstack.training.manifests import APP_LABELS
from reviewstack.training.settings import LauncherSettings
from reviewstack.v1 import operations_pb2

from .conftest import publish_dataset, spec_data
from .kube_fake import FakeCluster, as_run

TERMINAL = (
    operations_pb2.OPERATION_STATE_SUCCEEDED,
    operations_pb2.OPERATION_STATE_FAILED,
    operations_pb2.OPERATION_STATE_CANCELLED,
)
COMPLETE = k8s.V1JobStatus(succeeded=1, conditions=[k8s.V1JobCondition(type="Complete", status="True")])
# the stand-in job: runs until `<its spec>.release` appears next to the spec it was given
HOLD = """
    import pathlib, sys, time
    release = pathlib.Path(sys.argv[1] + ".release")
    while not release.exists():
        time.sleep(0.02)
"""


# ---- fixtures -------------------------------------------------------------------------------------------
class Local:
    """Controllers with the local launcher over one local store and one log folder (one machine)."""

    def __init__(self, root: Path) -> None:
        self.root = root / "store"
        self.store = open_store(str(self.root))
        self.dataset = publish_dataset(self.store)
        self.settings = LauncherSettings(
            store=str(root / "store"), local_log_dir=root / "logs", poll_interval_s=0.05, cancel_grace_s=5
        )
        self.controllers: list[TrainingController] = []

    def controller(self, operations: RunOperations | None = None) -> TrainingController:
        launcher = LocalLauncher(
            self.settings, command=[sys.executable, "-c", textwrap.dedent(HOLD)], gpus_available=0
        )
        controller = TrainingController(self.settings, launcher, operations)
        self.controllers.append(controller)
        return controller

    def spec(self, run_id: str = "run-a", **fields: Any) -> TrainSpec:
        return validate_train_spec(spec_data(self.dataset, self.store.uri, run_id=run_id, **fields))

    def release(self, run_id: str = "run-a") -> None:
        (self.root / f"runs/{run_id}/spec.json.release").touch()


@pytest.fixture
def local(tmp_path: Path):
    env = Local(tmp_path)
    yield env
    close(env.controllers)


class Cluster:
    """Controllers with the kubernetes launcher over one S3 store and one (fake) cluster."""

    def __init__(self, s3_server: Any, bucket: str) -> None:
        self.settings = LauncherSettings(
            **s3_server.settings().model_dump(),
            launcher="kubernetes",
            k8s_namespace="ml",
            poll_interval_s=0.05,
        )
        self.settings.store = f"s3://{bucket}/store"
        self.store = open_store(self.settings.store, self.settings)
        self.dataset = publish_dataset(self.store)
        self.cluster = FakeCluster()
        self.controllers: list[TrainingController] = []

    def controller(self) -> TrainingController:
        launcher = KubernetesLauncher(self.settings, batch=self.cluster, core=self.cluster)
        controller = TrainingController(self.settings, launcher)
        self.controllers.append(controller)
        return controller

    def spec(self, run_id: str = "run-a", output: str = "", **fields: Any) -> TrainSpec:
        return validate_train_spec(spec_data(self.dataset, output or self.store.uri, run_id=run_id, **fields))


@pytest.fixture
def cluster(s3_server, monkeypatch, request):
    monkeypatch.setattr(launcher_module, "_RETRY_S", 0.0)
    env = Cluster(s3_server, f"ident-{abs(hash(request.node.name)) % 10**8}")
    yield env
    close(env.controllers)  # Jobs are detached, as on a server's shutdown


def close(controllers: list[TrainingController]) -> None:
    """Stop the controllers as a server does, and wait for their runs' threads to let go."""
    for controller in controllers:
        controller.operations.shutdown(cancel_running=True)
    for controller in controllers:
        for run_id in list(controller._runs):
            wait_end(controller, run_id)


def wait_end(controller: TrainingController, run_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while (run := controller.get(run_id)).operation.state not in TERMINAL:
        assert time.monotonic() < deadline, run
        time.sleep(0.02)
    return run


def stored(store: ArtifactStore, run_id: str = "run-a") -> bytes:
    return store.get_bytes(f"runs/{run_id}/spec.json")


# ---- one spec per run id ---------------------------------------------------------------------------------
def test_a_different_spec_for_an_existing_run_is_refused_by_any_controller(local):
    first = local.controller()
    first.submit(local.spec())
    local.release()
    assert wait_end(first, "run-a").operation.state == operations_pb2.OPERATION_STATE_SUCCEEDED
    written = stored(local.store)

    restarted = local.controller()  # another replica, or the server after a restart: nothing in memory
    for controller in (first, restarted):
        with pytest.raises(errors.AlreadyExists) as refused:
            controller.submit(local.spec(learning_rate=2e-4, epochs=1))
        message = str(refused.value)
        assert "run run-a already exists" in message and "runs/run-a/spec.json" in message
        assert "learning_rate: 0.0001 stored, 0.0002 submitted" in message and "epochs: 3.0 stored" in message
        assert "another run_id" in message
    assert stored(local.store) == written


def test_the_same_spec_resumes_the_run_without_rewriting_it(local):
    first = local.controller()
    first.submit(local.spec())
    local.release()
    wait_end(first, "run-a")
    spec_file = local.root / "runs/run-a/spec.json"
    before = spec_file.stat()

    resumed = local.controller().submit(local.spec())  # a restarted server; the documented resume
    assert resumed.run_id == "run-a" and resumed.operation.id
    again = local.controllers[-1]
    assert wait_end(again, "run-a").operation.state == operations_pb2.OPERATION_STATE_SUCCEEDED
    after = spec_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # never rewritten


def test_a_stored_spec_that_cannot_be_read_is_left_alone(local):
    local.store.put_bytes("runs/run-a/spec.json", b'{"run_id": "run-a", "learning_rte": 1}')
    with pytest.raises(
        errors.AlreadyExists, match=r"cannot be read as a spec .*learning_rte.*another run_id"
    ):
        local.controller().submit(local.spec())
    assert stored(local.store) == b'{"run_id": "run-a", "learning_rte": 1}'


# ---- active runs -----------------------------------------------------------------------------------------
def test_a_run_another_local_controller_runs_is_refused(local):
    """Two controllers on one machine (sharing the log folder): the second finds the first's process
    through the run's lock, even after the first controller let go of it."""
    first = local.controller()
    first.submit(local.spec())
    second = local.controller()
    deadline = time.monotonic() + 10
    while second.launcher.poll("run-a") is None:  # the first one's worker starts the process
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with pytest.raises(
        errors.FailedPrecondition, match="run run-a is already running under the local launcher"
    ):
        second.submit(local.spec())
    # the controller that started it is gone (its lock closed), the job process still holds the lock
    run = first.launcher._runs["run-a"]
    with run.lock:
        first.launcher._end(run, run.final or run_state_gone())
    with pytest.raises(errors.FailedPrecondition, match="processes this controller did not start"):
        second.submit(local.spec())
    with pytest.raises(errors.FailedPrecondition, match="fuser -v"):
        second.cancel("run-a")
    local.release()
    deadline = time.monotonic() + 10
    while second.launcher.poll("run-a") is not None:  # the job ended: nothing holds the lock
        assert time.monotonic() < deadline
        time.sleep(0.02)
    second.submit(local.spec())  # now it may resume
    local.release()
    wait_end(second, "run-a")


def run_state_gone():
    from reviewstack.training.launchers import LaunchState

    return LaunchState("failed", "the controller stopped following it")


def test_an_active_job_is_refused_before_anything_is_written(cluster):
    """The cluster runs run-a's Job (a previous controller made it); the store has lost its spec. A new
    controller must not write one: the Job's next pod would read it."""
    previous = cluster.controller()
    previous.launcher.launch(cluster.spec(), "s3://elsewhere/runs/run-a/spec.json", _one_gpu())
    cluster.cluster.set_job_status("run-a", k8s.V1JobStatus(active=1, ready=1))
    controller = cluster.controller()
    with pytest.raises(errors.FailedPrecondition, match="run run-a is already running under the kubernetes"):
        controller.submit(cluster.spec())
    assert not cluster.store.exists("runs/run-a/spec.json")
    assert [c for c in cluster.cluster.calls if c.startswith(("delete", "create job run-a"))] == [
        "create job run-a"  # the previous controller's, nothing since
    ]


def test_another_workloads_job_under_the_run_name_is_refused_before_anything_is_written(cluster):
    cluster.cluster.plant("job", "run-a", {"app": "postgres"})
    with pytest.raises(errors.FailedPrecondition, match="Job run-a in namespace ml is not a review-stack"):
        cluster.controller().submit(cluster.spec())
    assert not cluster.store.exists("runs/run-a/spec.json")
    assert cluster.cluster.job("run-a").metadata.labels == {"app": "postgres"}


def test_a_kubectl_started_run_is_seen_as_active(cluster):
    cluster.cluster.plant("job", "run-a", {**APP_LABELS, "app.kubernetes.io/managed-by": "kubectl"})
    with pytest.raises(errors.FailedPrecondition, match="already pending"):
        cluster.controller().submit(cluster.spec())


# ---- races -----------------------------------------------------------------------------------------------
def _aligned(monkeypatch: pytest.MonkeyPatch, parties: int) -> None:
    """Make every submission reach its exclusive create together, each having found no spec: the
    store's atomic create is then the only thing deciding who wins."""
    barrier = threading.Barrier(parties)
    original = controller_module.create_spec

    def create(store: ArtifactStore, spec: TrainSpec) -> None:
        barrier.wait(timeout=30)
        original(store, spec)

    monkeypatch.setattr(controller_module, "create_spec", create)


def _race(submit: list[Callable[[], Any]]) -> list[Any]:
    with ThreadPoolExecutor(len(submit)) as pool:
        futures = [pool.submit(fn) for fn in submit]
        return [f.exception() or f.result() for f in futures]


@pytest.mark.parametrize("backend", ["local", "s3"])
@pytest.mark.parametrize("same_spec", [True, False], ids=["same-spec", "different-specs"])
def test_two_replicas_submitting_a_new_run_id_at_once_one_wins(backend, same_spec, request, monkeypatch):
    env: Local | Cluster = request.getfixturevalue("local" if backend == "local" else "cluster")
    controllers = [env.controller() for _ in range(4)]
    specs = [env.spec() if same_spec else env.spec(seed=i) for i in range(4)]
    _aligned(monkeypatch, len(controllers))
    results = _race([lambda c=c, s=s: c.submit(s) for c, s in zip(controllers, specs, strict=True)])

    winners = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
    assert len(winners) == 1, results
    losers = [r for r in results if isinstance(r, Exception)]
    if same_spec:
        assert all(isinstance(e, errors.FailedPrecondition) for e in losers), losers
        assert all("submitted by another controller at the same moment" in str(e) for e in losers)
    else:
        assert all(isinstance(e, errors.AlreadyExists) for e in losers), losers
        assert all("with another spec — seed:" in str(e) for e in losers)
    written = validate_train_spec(json.loads(stored(env.store)))
    assert written == specs[winners[0]]  # the winner's spec, whole


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_replicas_submitting_different_specs_for_a_new_run_id_one_is_accepted(backend, request):
    """No alignment this time: whatever the timing, the run id ends up with one spec, the accepted one;
    every other submission is ALREADY_EXISTS (it lost the create, or read the winner's spec)."""
    env: Local | Cluster = request.getfixturevalue("local" if backend == "local" else "cluster")
    controllers = [env.controller() for _ in range(4)]
    specs = [env.spec(seed=i) for i in range(4)]
    barrier = threading.Barrier(len(controllers))

    def submit(controller: TrainingController, spec: TrainSpec) -> Any:
        barrier.wait(timeout=30)
        return controller.submit(spec)

    results = _race([lambda c=c, s=s: submit(c, s) for c, s in zip(controllers, specs, strict=True)])
    accepted = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
    assert len(accepted) == 1, results
    assert all(isinstance(r, errors.AlreadyExists) for r in results if isinstance(r, Exception)), results
    assert validate_train_spec(json.loads(stored(env.store))) == specs[accepted[0]]


def test_replicas_resuming_a_finished_run_at_once_start_one_job(cluster):
    """All find the same stored spec and a finished Job; Kubernetes' unique Job names and the delete
    preconditions let exactly one of them replace it. Each other one is refused: at SubmitRun when the
    new Job is already there, else when its own launch finds it (its run fails, saying so)."""
    first = cluster.controller()
    first.submit(cluster.spec())
    _wait_job(cluster, "run-a")
    cluster.cluster.set_job_status("run-a", COMPLETE)
    wait_end(first, "run-a")
    old_job, written = cluster.cluster.job("run-a").metadata.uid, stored(cluster.store)

    replicas = [cluster.controller() for _ in range(4)]
    results = _race([lambda c=c: c.submit(cluster.spec()) for c in replicas])
    outcomes = []
    for controller, result in zip(replicas, results, strict=True):
        if isinstance(result, Exception):
            assert isinstance(result, errors.FailedPrecondition), result
            assert "run run-a is already pending under the kubernetes launcher" in str(result)
            outcomes.append("refused")
        else:
            op = _launched(controller, "run-a")
            if op.state == operations_pb2.OPERATION_STATE_FAILED:
                assert "Job run-a of this run is still active in namespace ml" in op.error.message, op
            outcomes.append(operations_pb2.OperationState.Name(op.state))
    assert outcomes.count("OPERATION_STATE_RUNNING") == 1, outcomes
    assert cluster.cluster.job("run-a").metadata.uid != old_job
    assert stored(cluster.store) == written


def _launched(controller: TrainingController, run_id: str) -> operations_pb2.Operation:
    """The run's operation once its launch is over: failed, or following the Job it made."""
    deadline = time.monotonic() + 10
    while True:
        op = controller.get(run_id).operation
        if op.state in TERMINAL or op.progress.stage not in ("", "launching"):
            return op
        assert time.monotonic() < deadline, op
        time.sleep(0.02)


def _wait_job(cluster: Cluster, name: str) -> None:
    deadline = time.monotonic() + 10
    while cluster.cluster.job(name) is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def _one_gpu():
    from reviewstack.training.specs import Resources

    return Resources(1)


# ---- refused means nothing kept ----------------------------------------------------------------------------
def test_a_submission_refused_for_too_many_waiting_runs_leaves_no_spec(local):
    controller = local.controller(RunOperations(max_workers=1, max_pending=1))
    controller.submit(local.spec("run-a"))  # runs (one local run at a time)
    deadline = time.monotonic() + 10
    while controller.get("run-a").operation.state != operations_pb2.OPERATION_STATE_RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    controller.submit(local.spec("run-b"))  # waits
    with pytest.raises(errors.ResourceExhausted):
        controller.submit(local.spec("run-c"))
    assert not local.store.exists("runs/run-c/spec.json")
    local.release("run-a")


# ---- the spec URI reaches the Job as written --------------------------------------------------------------
def test_an_output_prefix_with_references_reaches_the_job_as_written(cluster):
    output = f"{cluster.store.uri}/team$(REVIEWSTACK_S3_SECRET_KEY)$$(X)"
    run = cluster.controller().submit(cluster.spec(output=output))
    _wait_job(cluster, "run-a")
    container = cluster.cluster.bodies[("job", "ml", "run-a")]["spec"]["template"]["spec"]["containers"][0]
    argv, _ = as_run(container)
    assert argv[-1] == f"{output}/runs/run-a/spec.json" == f"{run.uri}/spec.json"
    assert open_store(output, cluster.settings).exists("runs/run-a/spec.json")  # what the job will read


# ---- memory stays bounded ---------------------------------------------------------------------------------
def test_finished_runs_beyond_the_limit_are_forgotten_and_read_from_the_store(local, monkeypatch):
    from reviewstack.training.launchers import local as local_module

    monkeypatch.setattr(controller_module, "_KEEP_FINISHED", 2)
    monkeypatch.setattr(local_module, "_KEEP_FINISHED", 2)
    controller = local.controller()
    for i in range(5):
        (local.root / f"runs/run-{i}").mkdir(parents=True)
        local.release(f"run-{i}")  # the stand-in ends at once
        controller.submit(local.spec(f"run-{i}"), request_id=f"req-{i}")
        wait_end(controller, f"run-{i}")
    assert sorted(controller._runs) == ["run-2", "run-3", "run-4"]  # 2 finished kept + the newest
    assert controller.find_request("req-0") is None  # forgotten with its run
    assert controller.find_request("req-3").run_id == "run-3"
    assert len(controller.launcher._runs) == 3
    old = controller.get("run-0")  # from the store now
    assert old.spec.run_id == "run-0" and old.uri.endswith("/runs/run-0")
    assert "run-0" in [r.run_id for r in controller.list()]
