"""The Training service as users run it: `reviewstack-training` processes with auth on, driven by real
gRPC clients.

- A kubernetes-launcher server over a real S3 protocol server, with no cluster to talk to: everything
  up to creating the Job is real (validation, dataset check, spec.json written to S3, idempotency,
  Get/List/Watch), and the run then fails telling the user there is no Kubernetes API.
- A local-launcher server: hardware preflight, and the real training job (`reviewstack-train`, when
  installed) refusing a spec whose base model does not exist — exit status 2, not retried.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from reviewstack.common.grpc import make_channel
from reviewstack.common.store import open_store
from reviewstack.v1 import operations_pb2, operations_pb2_grpc, training_pb2, training_pb2_grpc

from ..conftest import service_process
from .conftest import BIN, HAS_TRAIN_JOB, NO_TRAIN_JOB, publish_dataset

TOKEN = "train-token-42"
SERVICE = "reviewstack.v1.Training"
FAILED = operations_pb2.OPERATION_STATE_FAILED
SUCCEEDED = operations_pb2.OPERATION_STATE_SUCCEEDED


@contextlib.contextmanager
def training_server(log: Path, env: dict[str, str]) -> Iterator[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("REVIEWSTACK_", "KUBERNETES_"))}
    # base models: the cluster's image path the specs below name, and the tiny models the tests build
    roots = json.dumps(["/models", tempfile.gettempdir()])
    full_env.update(
        {
            "REVIEWSTACK_AUTH_TOKEN": TOKEN,
            "REVIEWSTACK_POLL_INTERVAL_S": "0.2",
            "REVIEWSTACK_BASE_MODEL_ROOTS": roots,
            **env,
        }
    )
    with service_process("reviewstack-training", SERVICE, full_env, log, ready_timeout_s=60) as target:
        yield target


@pytest.fixture(scope="module")
def cluster(s3_server, tmp_path_factory):
    """A kubernetes-launcher server whose store is S3; KUBECONFIG points nowhere (no cluster here)."""
    store_uri = "s3://train-test/store"
    store = open_store(store_uri, s3_server.settings())
    dataset = publish_dataset(store)
    env = {
        **s3_server.env(),
        "REVIEWSTACK_STORE": store_uri,
        "REVIEWSTACK_LAUNCHER": "kubernetes",
        "REVIEWSTACK_K8S_NAMESPACE": "training",
        "KUBECONFIG": str(tmp_path_factory.mktemp("kube") / "missing-config"),
    }
    log = tmp_path_factory.mktemp("training") / "cluster-server.log"
    with training_server(log, env) as target:
        yield {"target": target, "store": store, "dataset": dataset, "log": log}


def _stubs(target: str, token: str | None = TOKEN):
    channel = make_channel(target, token)
    return training_pb2_grpc.TrainingStub(channel), operations_pb2_grpc.OperationsStub(channel)


def _run_spec(dataset: str, run_id: str = "", output: str = "", **config: object) -> training_pb2.RunSpec:
    struct = struct_pb2.Struct()
    struct.update({"max_steps": 20, **config})
    return training_pb2.RunSpec(
        run_id=run_id, dataset=dataset, base_model="/models/llama-3-8b", output=output, config=struct
    )


def _with_base_model(spec: training_pb2.RunSpec, base_model: str) -> training_pb2.RunSpec:
    spec.base_model = base_model
    return spec


def _watch_to_end(stub: training_pb2_grpc.TrainingStub, run_id: str) -> list[training_pb2.Run]:
    return list(stub.WatchRun(training_pb2.GetRunRequest(run_id=run_id), timeout=60))


def test_calls_need_the_token(cluster):
    for token in (None, "wrong"):
        stub, _ = _stubs(cluster["target"], token)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListRuns(training_pb2.ListRunsRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "spec, code, message",
    [
        (lambda d: _run_spec(d, lora={"r": 0}), grpc.StatusCode.INVALID_ARGUMENT, "lora.r: Input should be"),
        (lambda d: _run_spec(d, learning_rte=1e-4), grpc.StatusCode.INVALID_ARGUMENT, "learning_rte: Extra"),
        (lambda d: _run_spec(d, run_id="Not A Label"), grpc.StatusCode.INVALID_ARGUMENT, "run_id:"),
        (
            lambda d: _run_spec(d.replace("tiny", "nope")),
            grpc.StatusCode.NOT_FOUND,
            "no published dataset at s3://train-test/store/datasets/nope/v1",
        ),
        (lambda d: _run_spec(d, output="/tmp/out"), grpc.StatusCode.PERMISSION_DENIED, "output '/tmp/out'"),
        # the controller's credentials reach only its own store and the model roots its operator named
        (
            lambda d: _run_spec("s3://another-bucket/datasets/tiny/v1"),
            grpc.StatusCode.PERMISSION_DENIED,
            "dataset 's3://another-bucket/datasets/tiny/v1' is outside",
        ),
        (
            lambda d: _run_spec(d, output="s3://train-test/store2"),
            grpc.StatusCode.PERMISSION_DENIED,
            "outside",
        ),
        (
            lambda d: _with_base_model(_run_spec(d), "/etc"),
            grpc.StatusCode.PERMISSION_DENIED,
            "base_model '/etc' is not under",
        ),
        (
            lambda d: _with_base_model(_run_spec(d), "/models/../etc/x"),
            grpc.StatusCode.PERMISSION_DENIED,
            "base_model",
        ),
        (
            lambda d: _with_base_model(_run_spec(d), "s3://train-test/store/models/x"),
            grpc.StatusCode.PERMISSION_DENIED,
            "base_model",
        ),
    ],
)
def test_bad_specs_are_refused_before_launch(cluster, spec, code, message):
    stub, _ = _stubs(cluster["target"])
    before = set(cluster["store"].list_dirs("runs"))
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitRun(training_pb2.SubmitRunRequest(spec=spec(cluster["dataset"])), timeout=30)
    assert info.value.code() == code
    assert message in info.value.details()
    assert set(cluster["store"].list_dirs("runs")) == before  # nothing written, nothing launched


def test_cuda_with_zero_gpus_is_a_failed_precondition(cluster):
    stub, _ = _stubs(cluster["target"])
    spec = _run_spec(cluster["dataset"], device="cuda")
    spec.resources.gpus_per_node = 0
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitRun(training_pb2.SubmitRunRequest(spec=spec), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "device=cuda" in info.value.details()


def test_submit_is_idempotent_writes_the_spec_and_reports_a_missing_cluster(cluster):
    stub, operations = _stubs(cluster["target"])
    spec = _run_spec(cluster["dataset"])  # no run_id: the controller picks one
    spec.resources.gpus_per_node, spec.resources.nodes = 4, 2
    first = stub.SubmitRun(training_pb2.SubmitRunRequest(spec=spec, request_id="req-1"), timeout=30)
    again = stub.SubmitRun(training_pb2.SubmitRunRequest(spec=spec, request_id="req-1"), timeout=30)
    other = _run_spec(cluster["dataset"], run_id="different")
    retried = stub.SubmitRun(training_pb2.SubmitRunRequest(spec=other, request_id="req-1"), timeout=30)
    run_id = first.run_id
    assert run_id.startswith("run-")
    assert again.run_id == retried.run_id == run_id  # same key, same run: nothing was started twice
    assert again.operation.id == retried.operation.id == first.operation.id
    assert (first.spec.resources.gpus_per_node, first.spec.resources.nodes) == (4, 2)
    assert first.uri == f"s3://train-test/store/runs/{run_id}"
    assert first.log.startswith("kubectl logs -n training")
    # the spec reached the store before the Job would have been created, defaults filled in
    written = json.loads(cluster["store"].get_bytes(f"runs/{run_id}/spec.json"))
    assert written["run_id"] == run_id and written["max_steps"] == 20 and written["learning_rate"] == 1e-4
    assert written["output"] == "s3://train-test/store"
    updates = _watch_to_end(stub, run_id)
    final = updates[-1]
    assert final.operation.state == FAILED
    assert final.operation.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "no Kubernetes API to talk to" in final.operation.error.message
    assert (
        operations.GetOperation(operations_pb2.GetOperationRequest(id=first.operation.id), timeout=10).state
        == FAILED
    )
    assert stub.GetRun(training_pb2.GetRunRequest(run_id=run_id), timeout=10).operation.state == FAILED
    listed = [r.run_id for r in stub.ListRuns(training_pb2.ListRunsRequest(), timeout=10).runs]
    assert run_id in listed
    # the run has ended: the same run id may be submitted again (it would resume from checkpoints)
    resubmitted = stub.SubmitRun(
        training_pb2.SubmitRunRequest(spec=_run_spec(cluster["dataset"], run_id)), timeout=30
    )
    assert resubmitted.run_id == run_id and resubmitted.operation.id != first.operation.id
    _watch_to_end(stub, run_id)


def test_cli_submit_watch_and_cancel_against_the_server(cluster, s3_server, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"run_id: from-cli\ndataset: {cluster['dataset']}\nbase_model: /models/m\nmax_steps: 5\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVIEWSTACK_")}
    env.update(s3_server.env(), REVIEWSTACK_TOKEN=TOKEN, COLUMNS="200")
    cli = [str(BIN / "reviewstack"), "train"]
    server = ["--server", cluster["target"]]
    submit = subprocess.run(
        [*cli, "submit", str(spec), "lora.r=4", *server, "--gpus", "2", "--watch"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert submit.returncode == 1, submit.stdout + submit.stderr  # the run failed (no cluster here)
    text = " ".join(submit.stdout.split())
    assert "run from-cli failed" in text and "no Kubernetes API to talk to" in text
    assert "log kubectl logs -n training" in text
    stub, _ = _stubs(cluster["target"])
    run = stub.GetRun(training_pb2.GetRunRequest(run_id="from-cli"), timeout=10)
    assert run.spec.config["lora"]["r"] == 4 and run.spec.resources.gpus_per_node == 2
    # cancelling a run that has ended leaves it as it ended
    cancelled = stub.CancelRun(training_pb2.CancelRunRequest(run_id="from-cli"), timeout=10)
    assert cancelled.operation.state == FAILED


def test_runs_found_in_the_store_are_reported(cluster):
    """A run started with kubectl (not by this controller): its status.json in the store is the source."""
    store = cluster["store"]
    spec = {"run_id": "by-kubectl", "dataset": cluster["dataset"], "base_model": "/m", "output": store.uri}
    store.put_bytes("runs/by-kubectl/spec.json", json.dumps(spec).encode())
    status = {
        "state": "running",
        "step": 120,
        "total_steps": 300,
        "epoch": 1.2,
        "metrics": {"loss": 1.25, "val_loss": 1.5, "lr": 1e-4, "tokens_per_s": 5400.0, "peak_mem_gib": None},
        "best": {"step": 100, "val_loss": 1.4},
        "message": "",
        "updated_at": "2026-01-02T03:04:05+00:00",
    }
    store.put_bytes("runs/by-kubectl/status.json", json.dumps(status).encode())
    with store.publish("runs/by-kubectl/best") as pub:
        pub.put_bytes("adapter_model.safetensors", b"weights")
    stub, _ = _stubs(cluster["target"])
    run = stub.GetRun(training_pb2.GetRunRequest(run_id="by-kubectl"), timeout=10)
    assert run.operation.state == operations_pb2.OPERATION_STATE_RUNNING
    assert (run.operation.progress.done, run.operation.progress.total) == (120, 300)
    assert dict(run.metrics) == {
        "loss": 1.25,
        "val_loss": 1.5,
        "lr": 1e-4,
        "tokens_per_s": 5400.0,
        "best_val_loss": 1.4,
        "best_step": 100.0,
    }
    assert dict(run.artifacts) == {"best": "s3://train-test/store/runs/by-kubectl/best"}
    assert run.spec.base_model == "/m"
    assert "by-kubectl" in [r.run_id for r in stub.ListRuns(training_pb2.ListRunsRequest(), timeout=10).runs]
    with pytest.raises(grpc.RpcError) as info:
        stub.GetRun(training_pb2.GetRunRequest(run_id="never-ran"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "never-ran" in info.value.details()


# ---- the local launcher -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local(tmp_path_factory):
    root = tmp_path_factory.mktemp("local-training")
    store = open_store(str(root / "store"))
    publish_dataset(store)
    env = {
        "REVIEWSTACK_STORE": str(root / "store"),
        "REVIEWSTACK_LOCAL_GPUS": "0",
        "REVIEWSTACK_LOCAL_LOG_DIR": str(root / "logs"),
        "REVIEWSTACK_LOCAL_MAX_RESTARTS": "2",
    }
    with training_server(root / "local-server.log", env) as target:
        yield {
            "target": target,
            "store": store,
            "root": root,
            "dataset": str(root / "store/datasets/tiny/v1"),
        }


def test_local_cuda_without_a_gpu_is_refused(local):
    stub, _ = _stubs(local["target"])
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitRun(
            training_pb2.SubmitRunRequest(spec=_run_spec(local["dataset"], device="cuda")), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "device=cuda but this machine has no GPU" in info.value.details()


def _wait_state(stub, run_id: str, state: int, timeout: float = 30) -> training_pb2.Run:
    deadline = time.monotonic() + timeout
    while True:
        run = stub.GetRun(training_pb2.GetRunRequest(run_id=run_id), timeout=10)
        if run.operation.state == state:
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.05)


@pytest.mark.skipif(not HAS_TRAIN_JOB, reason=NO_TRAIN_JOB)
def test_the_real_job_end_to_end_bad_input_queueing_and_cancel(local):
    """End to end through the real `reviewstack-train` (its base model does not exist, so it is bad input):
    - the run fails with INVALID_ARGUMENT and the job's own reason, and is not restarted (exit status 2);
    - a second run waits PENDING (one local run at a time) and is cancelled before it ever starts;
    - the same run id submitted again runs again, and CancelRun stops the live process (SIGTERM)."""
    stub, _ = _stubs(local["target"])
    spec = _run_spec(local["dataset"], run_id="no-model")
    spec.base_model = str(local["root"] / "no-such-model")
    first = stub.SubmitRun(training_pb2.SubmitRunRequest(spec=spec), timeout=30)
    queued_spec = training_pb2.RunSpec()
    queued_spec.CopyFrom(spec)
    queued_spec.run_id = "queued"
    queued = stub.SubmitRun(training_pb2.SubmitRunRequest(spec=queued_spec), timeout=30)
    assert queued.operation.state == operations_pb2.OPERATION_STATE_PENDING
    cancelled = stub.CancelRun(training_pb2.CancelRunRequest(run_id="queued"), timeout=30)
    assert cancelled.operation.state == operations_pb2.OPERATION_STATE_CANCELLED
    assert not Path(queued.log).exists()  # never launched

    final = _watch_to_end(stub, first.run_id)[-1]
    assert final.operation.state == FAILED, final
    assert final.operation.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "refused its spec or input" in final.operation.error.message
    assert "no-such-model" in final.operation.error.message  # the job's own reason, from its log
    assert final.attempts == 1  # exit status 2 is never retried
    log = Path(final.log).read_text()
    assert log.count("=== ") == 1 and "no-such-model" in log

    again = stub.SubmitRun(training_pb2.SubmitRunRequest(spec=spec), timeout=30)
    assert again.operation.id != first.operation.id
    _wait_state(stub, "no-model", operations_pb2.OPERATION_STATE_RUNNING)
    stub.CancelRun(training_pb2.CancelRunRequest(run_id="no-model"), timeout=30)
    stopped = _watch_to_end(stub, "no-model")[-1]
    assert stopped.operation.state == operations_pb2.OPERATION_STATE_CANCELLED, stopped
    assert "submitting the same run_id resumes it" in stopped.operation.progress.message
    log = Path(stopped.log).read_text()
    assert log.count("=== ") == 2  # the first run's attempt, then this one: appended to the same log


def test_a_dataset_named_by_key_runs_from_the_controllers_store(cluster):
    """Keys name the controller's store; the job is handed the full URI it resolved to."""
    stub, _ = _stubs(cluster["target"])
    run = stub.SubmitRun(
        training_pb2.SubmitRunRequest(spec=_run_spec("datasets/tiny/v1", run_id="by-key")), timeout=30
    )
    assert run.spec.dataset == cluster["dataset"] == "s3://train-test/store/datasets/tiny/v1"
    assert run.spec.output == "s3://train-test/store"


@pytest.mark.parametrize("run_id", ["../../etc", "a/b", "UPPER", "x" * 64, "$(SECRET)"])
def test_run_ids_in_requests_are_checked_before_any_lookup(cluster, run_id):
    """A run id names a store folder and a Job: anything but a DNS label is refused at the door."""
    stub, _ = _stubs(cluster["target"])
    for call in (stub.GetRun, stub.CancelRun):
        request = (training_pb2.GetRunRequest if call is stub.GetRun else training_pb2.CancelRunRequest)(
            run_id=run_id
        )
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert "run_id" in info.value.details()
