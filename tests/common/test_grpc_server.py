"""The shared gRPC bootstrap, end to end: real grpc.aio servers on loopback, real sync clients.

Servers run on an asyncio loop in a background thread (no pytest-asyncio here); the tests talk to them
through `make_channel` like a CLI would. The servicer is a small DataPrep built on the generated code:
ListDatasets misbehaves on request (request.name picks the behaviour) and BuildDataset starts
operations whose work the test steers through threading events.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pydantic
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from reviewstack.common import errors
from reviewstack.common.grpc import (
    GrpcServer,
    OperationRegistry,
    ProgressReporter,
    ServiceRegistration,
    current_request_id,
    is_terminal,
    make_channel,
    wait_operation,
    wait_until_serving,
    wait_until_serving_async,
)
from reviewstack.common.grpc.interceptors import REQUEST_ID
from reviewstack.common.settings import ServerSettings
from reviewstack.v1 import dataprep_pb2, dataprep_pb2_grpc, operations_pb2, operations_pb2_grpc

T = TypeVar("T")
DATAPREP = "reviewstack.v1.DataPrep"
BUILD_KIND = "reviewstack.v1.DataPrep/BuildDataset"
SECRET_DETAIL = "db password is hunter2"  # must never reach a client
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
RUNNING = operations_pb2.OPERATION_STATE_RUNNING


class _Spec(pydantic.BaseModel):
    max_prompt_length: int = pydantic.Field(gt=0)


class FakeDataPrep(dataprep_pb2_grpc.DataPrepServicer):
    """DataPrep whose behaviour the request picks; events let a test see and steer what runs."""

    def __init__(self, registry: OperationRegistry) -> None:
        self.registry = registry
        self.entered = threading.Event()  # a ListDatasets "slow" call is in its handler
        self.release = threading.Event()  # lets a BuildDataset "ok" work finish

    async def ListDatasets(
        self, request: dataprep_pb2.ListDatasetsRequest, context: Any
    ) -> dataprep_pb2.ListDatasetsResponse:
        name = request.name
        if name == "missing":
            raise errors.NotFound("dataset 'missing' not found in the store; list datasets to see names")
        if name == "boom":
            raise RuntimeError(SECRET_DETAIL)
        if name == "invalid":
            _Spec(max_prompt_length=-1)
        if name.startswith("slow:"):
            self.entered.set()
            await asyncio.sleep(float(name.removeprefix("slow:")))
        info = dataprep_pb2.DatasetInfo(name=name, version=current_request_id())
        return dataprep_pb2.ListDatasetsResponse(datasets=[info])

    async def BuildDataset(
        self, request: dataprep_pb2.BuildDatasetRequest, context: Any
    ) -> operations_pb2.Operation:
        work = {"ok": self._work_ok, "fail": _work_fail, "crash": _work_crash, "spin": _work_spin}
        return self.registry.start(BUILD_KIND, work[request.name], request_id=request.request_id)

    def _work_ok(self, progress: ProgressReporter) -> dataprep_pb2.BuildDatasetResult:
        progress.update(stage="distilling", done=1, total=3, message="paper 1")
        assert self.release.wait(10), "the test never released the work"
        progress.update(done=3, message="paper 3")
        return dataprep_pb2.BuildDatasetResult(name="ds", version="v1", split_counts={"train": 3})


def _work_fail(progress: ProgressReporter) -> None:
    raise errors.FailedPrecondition("output s3://bucket/x is not writable; check the store credentials")


def _work_crash(progress: ProgressReporter) -> None:
    raise RuntimeError(SECRET_DETAIL)


def _work_spin(progress: ProgressReporter) -> None:
    for i in range(1000):
        progress.update(stage="spinning", done=i)
        progress.check_cancelled()
        time.sleep(0.01)
    raise AssertionError("never cancelled")


# -- fixtures: an event loop in a thread, servers on it, channels to them --


class LoopThread:
    """An asyncio loop running in a daemon thread; `run` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


def make_settings(**overrides: Any) -> ServerSettings:
    # explicit values for everything the test relies on, so REVIEWSTACK_* in the environment can't leak in
    values: dict[str, Any] = dict(
        host="127.0.0.1",
        port=0,
        auth_token=None,
        auth_token_file=None,
        metrics_port=0,
        default_deadline_s=10.0,
        shutdown_grace_s=1.0,
    )
    values.update(overrides)
    return ServerSettings(**values)


class Running:
    """A started server with its servicer, registry and a way to open channels."""

    def __init__(self, server: GrpcServer, servicer: FakeDataPrep, registry: OperationRegistry) -> None:
        self.server, self.servicer, self.registry = server, servicer, registry
        self.target = f"127.0.0.1:{server.port}"
        self._channels: list[grpc.Channel] = []

    def channel(self, token: str | None = None) -> grpc.Channel:
        ch = make_channel(self.target, token)
        self._channels.append(ch)
        return ch

    def dataprep(self, token: str | None = None) -> dataprep_pb2_grpc.DataPrepStub:
        return dataprep_pb2_grpc.DataPrepStub(self.channel(token))

    def operations(self, token: str | None = None) -> operations_pb2_grpc.OperationsStub:
        return operations_pb2_grpc.OperationsStub(self.channel(token))

    def close_channels(self) -> None:
        for ch in self._channels:
            ch.close()


@pytest.fixture
def start(loop_thread: LoopThread) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def _start(**settings: Any) -> Running:
        registry = OperationRegistry(max_workers=2)
        servicer = FakeDataPrep(registry)
        reg = ServiceRegistration(DATAPREP, dataprep_pb2_grpc.add_DataPrepServicer_to_server, servicer)
        server = GrpcServer(make_settings(**settings), [reg], registry)
        loop_thread.run(server.start())
        started.append(Running(server, servicer, registry))
        return started[-1]

    yield _start
    for r in started:
        r.servicer.release.set()
        r.close_channels()
        loop_thread.run(r.server.stop(0))
        r.registry.shutdown()


def rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health_status(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# -- health and reflection --


def test_health_serving_then_not_serving_after_set_serving(
    start: Callable[..., Running], loop_thread: LoopThread
) -> None:
    r = start()
    ch = r.channel()
    wait_until_serving(ch, DATAPREP, timeout=5)
    assert health_status(ch) == SERVING
    assert health_status(ch, "reviewstack.v1.Operations") == SERVING

    r.server.set_serving(DATAPREP, False)  # from a thread other than the server's loop
    assert eventually(lambda: health_status(ch, DATAPREP) == NOT_SERVING)
    assert health_status(ch) == NOT_SERVING, "the whole server is not ready while one service is not"

    async def back_on() -> None:  # from the server's own loop
        r.server.set_serving(DATAPREP, True)

    loop_thread.run(back_on())
    assert eventually(lambda: health_status(ch, DATAPREP) == SERVING and health_status(ch) == SERVING)


def test_set_serving_before_start_holds_not_serving(loop_thread: LoopThread) -> None:
    registry = OperationRegistry()
    reg = ServiceRegistration(
        DATAPREP, dataprep_pb2_grpc.add_DataPrepServicer_to_server, FakeDataPrep(registry)
    )
    server = GrpcServer(make_settings(), [reg], registry)
    server.set_serving(DATAPREP, False)  # e.g. a model still loading
    port = loop_thread.run(server.start())
    try:
        with make_channel(f"127.0.0.1:{port}") as ch:
            assert health_status(ch, DATAPREP) == NOT_SERVING
            assert health_status(ch) == NOT_SERVING
    finally:
        loop_thread.run(server.stop(0))
        registry.shutdown()


def test_port_in_use_is_a_clear_error(start: Callable[..., Running], loop_thread: LoopThread) -> None:
    r = start()
    second = GrpcServer(make_settings(port=r.server.port), [])
    with pytest.raises(errors.Unavailable, match=f"cannot listen on 127.0.0.1:{r.server.port}"):
        loop_thread.run(second.start())


def test_reflection_lists_all_services(start: Callable[..., Running]) -> None:
    r = start(auth_token="s3cret")  # reflection stays open without a token
    services = set(ProtoReflectionDescriptorDatabase(r.channel()).get_services())
    assert {
        DATAPREP,
        "reviewstack.v1.Operations",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services


# -- auth --


def test_auth_rejects_missing_and_wrong_token_accepts_right_one(start: Callable[..., Running]) -> None:
    r = start(auth_token="s3cret")
    request = dataprep_pb2.ListDatasetsRequest(name="ok")

    missing = rpc_error(lambda: r.dataprep().ListDatasets(request, timeout=5))
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in missing.details()

    wrong = rpc_error(lambda: r.dataprep("guess").ListDatasets(request, timeout=5))
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "invalid bearer token" in wrong.details()

    assert r.dataprep("s3cret").ListDatasets(request, timeout=5).datasets[0].name == "ok"
    # the Operations service is protected as well
    ops_error = rpc_error(lambda: r.operations().ListOperations(operations_pb2.ListOperationsRequest()))
    assert ops_error.code() == grpc.StatusCode.UNAUTHENTICATED
    # health stays open for probes
    assert health_status(r.channel()) == SERVING


def test_auth_token_file_rotation_is_picked_up(start: Callable[..., Running], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    r = start(auth_token_file=token_file)
    request = dataprep_pb2.ListDatasetsRequest(name="ok")
    r.dataprep("first-token").ListDatasets(request, timeout=5)

    # Kubernetes swaps a mounted Secret atomically: a new file renamed over the old one
    new = tmp_path / "token.new"
    new.write_text("second-token\n")
    os.replace(new, token_file)

    error = rpc_error(lambda: r.dataprep("first-token").ListDatasets(request, timeout=5))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    r.dataprep("second-token").ListDatasets(request, timeout=5)


def test_unreadable_token_file_refuses_to_start(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"
    with pytest.raises(errors.FailedPrecondition, match="no-such-secret"):
        GrpcServer(make_settings(auth_token_file=missing), [])
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(errors.FailedPrecondition, match="empty"):
        GrpcServer(make_settings(auth_token_file=empty), [])


def test_no_token_warns_once_at_start(loop_thread: LoopThread) -> None:
    server = GrpcServer(make_settings(), [])
    with structlog.testing.capture_logs() as logs:
        loop_thread.run(server.start())
        loop_thread.run(server.stop(0))
    warnings = [e for e in logs if e["log_level"] == "warning" and "auth is off" in e["event"]]
    assert len(warnings) == 1


# -- exception mapping, request ids, deadlines --


def test_review_stack_error_maps_to_its_code_and_message(start: Callable[..., Running]) -> None:
    r = start()
    error = rpc_error(lambda: r.dataprep().ListDatasets(dataprep_pb2.ListDatasetsRequest(name="missing")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "dataset 'missing' not found in the store; list datasets to see names"


def test_unexpected_exception_is_internal_without_traceback(start: Callable[..., Running]) -> None:
    r = start()
    stub = r.dataprep()
    error = rpc_error(
        lambda: stub.ListDatasets(
            dataprep_pb2.ListDatasetsRequest(name="boom"), metadata=[("x-request-id", "req-42")]
        )
    )
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error (request id req-42); see the server log"
    assert SECRET_DETAIL not in error.details() and "Traceback" not in error.details()
    assert ("x-request-id", "req-42") in tuple(error.trailing_metadata())


def test_sync_handler_is_refused_not_run_half_broken(loop_thread: LoopThread) -> None:
    class SyncDataPrep(dataprep_pb2_grpc.DataPrepServicer):
        def ListDatasets(self, request: Any, context: Any) -> dataprep_pb2.ListDatasetsResponse:
            return dataprep_pb2.ListDatasetsResponse()

    reg = ServiceRegistration(DATAPREP, dataprep_pb2_grpc.add_DataPrepServicer_to_server, SyncDataPrep())
    server = GrpcServer(make_settings(), [reg])
    port = loop_thread.run(server.start())
    try:
        with make_channel(f"127.0.0.1:{port}") as ch:
            stub = dataprep_pb2_grpc.DataPrepStub(ch)
            error = rpc_error(lambda: stub.ListDatasets(dataprep_pb2.ListDatasetsRequest(), timeout=5))
            assert error.code() == grpc.StatusCode.INTERNAL
    finally:
        loop_thread.run(server.stop(0))


def test_validation_error_is_invalid_argument_with_fields(start: Callable[..., Running]) -> None:
    r = start()
    error = rpc_error(lambda: r.dataprep().ListDatasets(dataprep_pb2.ListDatasetsRequest(name="invalid")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("invalid request: max_prompt_length:")


def test_request_id_is_echoed_and_generated(start: Callable[..., Running]) -> None:
    r = start()
    stub = r.dataprep()
    request = dataprep_pb2.ListDatasetsRequest(name="ok")
    response, call = stub.ListDatasets.with_call(request, metadata=[("x-request-id", "abc-123")])
    assert response.datasets[0].version == "abc-123", "the handler sees the id in its context"
    assert ("x-request-id", "abc-123") in tuple(call.trailing_metadata())
    response, call = stub.ListDatasets.with_call(request)
    generated = dict(call.trailing_metadata())["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated) and response.datasets[0].version == generated


def test_default_deadline_cuts_calls_without_one(start: Callable[..., Running]) -> None:
    r = start(default_deadline_s=0.3)
    stub = r.dataprep()
    began = time.monotonic()
    error = rpc_error(lambda: stub.ListDatasets(dataprep_pb2.ListDatasetsRequest(name="slow:3")))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "default of 0.3 s" in error.details()
    assert time.monotonic() - began < 2
    # a client's own (longer) deadline wins over the default
    response = stub.ListDatasets(dataprep_pb2.ListDatasetsRequest(name="slow:0.6"), timeout=5)
    assert response.datasets[0].name == "slow:0.6"


# -- metrics --


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def _sample(text: str, code: str) -> float:
    labels = f'grpc_code="{code}",grpc_method="ListDatasets",grpc_service="reviewstack.v1.DataPrep"'
    pattern = rf"^reviewstack_grpc_server_handled_total\{{{re.escape(labels)}\}} ([0-9.e+]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_endpoint_counts_calls(start: Callable[..., Running]) -> None:
    r = start(metrics_port=free_port())
    assert r.server.metrics_port is not None
    before = _scrape(r.server.metrics_port)
    stub = r.dataprep()
    stub.ListDatasets(dataprep_pb2.ListDatasetsRequest(name="ok"))
    stub.ListDatasets(dataprep_pb2.ListDatasetsRequest(name="ok"))
    rpc_error(lambda: stub.ListDatasets(dataprep_pb2.ListDatasetsRequest(name="missing")))

    # the server counts a call after its status has gone out: the client may read the page first
    def counted() -> bool:
        after = _scrape(r.server.metrics_port)
        return (
            _sample(after, "OK") - _sample(before, "OK") == 2
            and _sample(after, "NOT_FOUND") - _sample(before, "NOT_FOUND") == 1
        )

    assert eventually(counted)
    assert "reviewstack_grpc_server_handling_seconds_bucket" in _scrape(r.server.metrics_port)


# -- graceful shutdown --


def test_stop_drains_in_flight_call_and_ends_watch_streams(
    start: Callable[..., Running], loop_thread: LoopThread
) -> None:
    r = start()
    statuses: list[int] = []
    health_watch = health_pb2_grpc.HealthStub(r.channel()).Watch(health_pb2.HealthCheckRequest(service=""))
    health_end: list[grpc.StatusCode] = []

    def follow() -> None:
        for response in health_watch:
            statuses.append(response.status)
        health_end.append(health_watch.code())

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert eventually(lambda: statuses == [SERVING])
    op = r.dataprep().BuildDataset(dataprep_pb2.BuildDatasetRequest(name="ok"))  # runs until released
    op_watch = r.operations().WatchOperation(operations_pb2.GetOperationRequest(id=op.id))
    assert next(op_watch).id == op.id

    future = r.dataprep().ListDatasets.future(dataprep_pb2.ListDatasetsRequest(name="slow:0.7"), timeout=10)
    assert r.servicer.entered.wait(5)
    began = time.monotonic()
    loop_thread.run(r.server.stop(grace=8))
    # the unary call got its time; the endless watch streams did not hold the grace period open
    assert time.monotonic() - began < 4
    assert future.result(timeout=5).datasets[0].name == "slow:0.7"
    follower.join(5)
    assert statuses == [SERVING, NOT_SERVING] and health_end == [grpc.StatusCode.OK]
    op_error = rpc_error(lambda: list(op_watch))
    assert op_error.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in op_error.details()
    with pytest.raises(grpc.RpcError):
        r.dataprep().ListDatasets(dataprep_pb2.ListDatasetsRequest(name="ok"), timeout=1)


_SIGTERM_SCRIPT = textwrap.dedent("""
    import asyncio
    from reviewstack.common.grpc import ServiceRegistration, run_server
    from reviewstack.common.settings import ServerSettings
    from reviewstack.v1 import dataprep_pb2, dataprep_pb2_grpc

    class Slow(dataprep_pb2_grpc.DataPrepServicer):
        async def ListDatasets(self, request, context):
            print("in-flight", flush=True)
            await asyncio.sleep(1.0)
            return dataprep_pb2.ListDatasetsResponse(datasets=[dataprep_pb2.DatasetInfo(name="done")])

    run_server(
        ServerSettings(host="127.0.0.1", port=0, shutdown_grace_s=5),
        [ServiceRegistration("reviewstack.v1.DataPrep", dataprep_pb2_grpc.add_DataPrepServicer_to_server,
                             Slow())],
        on_started=lambda server: print(f"port={server.port}", flush=True),
    )
""")


def test_sigterm_drains_and_exits_zero() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVIEWSTACK_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("port="), line + proc.stderr.read() if proc.stderr else ""
        with make_channel(f"127.0.0.1:{line.strip().removeprefix('port=')}") as ch:
            future = dataprep_pb2_grpc.DataPrepStub(ch).ListDatasets.future(
                dataprep_pb2.ListDatasetsRequest(), timeout=10
            )
            assert proc.stdout.readline().strip() == "in-flight"
            proc.send_signal(signal.SIGTERM)
            assert future.result(timeout=10).datasets[0].name == "done"
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_missing_token_file_exits_with_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVIEWSTACK_")}
    env["REVIEWSTACK_AUTH_TOKEN_FILE"] = str(tmp_path / "not-mounted")
    proc = subprocess.run(
        [sys.executable, "-c", _SIGTERM_SCRIPT], capture_output=True, text=True, env=env, timeout=30
    )
    assert proc.returncode == 2
    assert "cannot read the auth token file" in proc.stderr and "not-mounted" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_aio_channel_sends_token_and_forwards_request_id(
    start: Callable[..., Running], loop_thread: LoopThread
) -> None:
    r = start(auth_token="tok")

    async def call() -> str:
        async with make_channel(r.target, "tok", aio=True) as channel:
            await wait_until_serving_async(channel, DATAPREP, timeout=5)
            REQUEST_ID.set("upstream-7")  # as inside another service's handler
            stub = dataprep_pb2_grpc.DataPrepStub(channel)
            response = await stub.ListDatasets(dataprep_pb2.ListDatasetsRequest(name="ok"), timeout=5)
            return response.datasets[0].version

    assert loop_thread.run(call()) == "upstream-7"


# -- operations --


def test_operation_watch_sees_progress_then_success(start: Callable[..., Running]) -> None:
    r = start(auth_token="tok")
    op = r.dataprep("tok").BuildDataset(dataprep_pb2.BuildDatasetRequest(name="ok"), timeout=5)
    assert op.kind == BUILD_KIND and op.id
    seen: list[operations_pb2.Operation] = []

    def on_update(update: operations_pb2.Operation) -> None:
        seen.append(update)
        if update.state == RUNNING and update.progress.done == 1:
            r.servicer.release.set()  # let the work finish only once the watcher saw it running

    final = wait_operation(r.channel("tok"), op.id, on_update=on_update, timeout=10)
    assert final.state == operations_pb2.OPERATION_STATE_SUCCEEDED
    running = [s for s in seen if s.state == RUNNING]
    assert running and running[0].progress.stage == "distilling" and running[0].progress.total == 3
    result = dataprep_pb2.BuildDatasetResult()
    assert final.result.Unpack(result)
    assert (result.name, result.version, dict(result.split_counts)) == ("ds", "v1", {"train": 3})
    assert final.progress.done == 3 and not final.HasField("error")
    assert final.update_time.ToNanoseconds() >= final.create_time.ToNanoseconds()


def test_operation_failures_carry_code_and_message(start: Callable[..., Running]) -> None:
    r = start()
    stub = r.dataprep()
    failed = wait_operation(
        r.channel(), stub.BuildDataset(dataprep_pb2.BuildDatasetRequest(name="fail")).id, timeout=10
    )
    assert failed.state == operations_pb2.OPERATION_STATE_FAILED
    assert failed.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert failed.error.message.startswith("output s3://bucket/x is not writable")

    crashed = wait_operation(
        r.channel(), stub.BuildDataset(dataprep_pb2.BuildDatasetRequest(name="crash")).id, timeout=10
    )
    assert crashed.state == operations_pb2.OPERATION_STATE_FAILED
    assert crashed.error.code == grpc.StatusCode.INTERNAL.value[0]
    assert crashed.error.message.startswith("internal error")
    assert SECRET_DETAIL not in crashed.error.message


def test_cancel_stops_running_operation(start: Callable[..., Running]) -> None:
    r = start()
    ops = r.operations()
    op = r.dataprep().BuildDataset(dataprep_pb2.BuildDatasetRequest(name="spin"))

    def on_update(update: operations_pb2.Operation) -> None:
        if update.state == RUNNING and update.progress.done >= 2:
            after = ops.CancelOperation(operations_pb2.CancelOperationRequest(id=update.id), timeout=5)
            assert after.state in (RUNNING, operations_pb2.OPERATION_STATE_CANCELLED)

    final = wait_operation(r.channel(), op.id, on_update=on_update, timeout=10)
    assert final.state == operations_pb2.OPERATION_STATE_CANCELLED
    assert final.progress.done < 999


def test_same_request_id_returns_same_operation(start: Callable[..., Running]) -> None:
    r = start()
    stub = r.dataprep()
    first = stub.BuildDataset(dataprep_pb2.BuildDatasetRequest(name="fail", request_id="key-1"))
    again = stub.BuildDataset(dataprep_pb2.BuildDatasetRequest(name="fail", request_id="key-1"))
    other = stub.BuildDataset(dataprep_pb2.BuildDatasetRequest(name="fail", request_id="key-2"))
    assert first.id == again.id != other.id
    assert again.request_id == "key-1"
    listed = r.operations().ListOperations(operations_pb2.ListOperationsRequest(kind=BUILD_KIND))
    assert [o.id for o in listed.operations] == [other.id, first.id], "newest first, one per key"
    assert r.operations().ListOperations(operations_pb2.ListOperationsRequest(kind="nope")).operations == []


def test_unknown_operation_is_not_found_for_get_and_watch(start: Callable[..., Running]) -> None:
    r = start()
    ops = r.operations()
    request = operations_pb2.GetOperationRequest(id="nope")
    assert rpc_error(lambda: ops.GetOperation(request)).code() == grpc.StatusCode.NOT_FOUND
    # a server-streaming handler's error maps the same way
    assert rpc_error(lambda: list(ops.WatchOperation(request, timeout=5))).code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(errors.NotFound, match="nope"):
        wait_operation(r.channel(), "nope", timeout=5)


def test_registry_watch_coalesces_many_updates_and_keeps_last_n() -> None:
    registry = OperationRegistry(max_workers=2, keep_finished=3)

    def chatty(progress: ProgressReporter) -> dataprep_pb2.BuildDatasetResult:
        for i in range(20_000):
            progress.update(stage="tokenizing", done=i + 1, total=20_000)
        return dataprep_pb2.BuildDatasetResult(name="chatty")

    async def follow() -> list[operations_pb2.Operation]:
        op = registry.start("k", chatty)
        return [snapshot async for snapshot in registry.watch(op.id)]

    try:
        snapshots = asyncio.run(follow())
        assert snapshots[-1].state == operations_pb2.OPERATION_STATE_SUCCEEDED
        assert snapshots[-1].progress.done == 20_000
        assert len(snapshots) < 20_000, "updates faster than the loop must coalesce"
        dones = [s.progress.done for s in snapshots]
        assert dones == sorted(dones)

        ids = [registry.start("k", lambda p: None).id for _ in range(5)]
        assert eventually(lambda: len(ops := registry.list("k")) == 3 and all(map(is_terminal, ops)))
        assert {o.id for o in registry.list("k")} == set(ids[-3:])
        with pytest.raises(errors.NotFound):
            registry.get(ids[0])
    finally:
        registry.shutdown()


def test_cancel_pending_operation_never_runs() -> None:
    registry = OperationRegistry(max_workers=1)
    gate = threading.Event()
    ran: list[str] = []
    try:
        registry.start("k", lambda p: gate.wait(5) and None)  # occupies the only worker
        queued = registry.start("k", lambda p: ran.append("ran"))
        assert registry.cancel(queued.id).state == operations_pb2.OPERATION_STATE_CANCELLED
        gate.set()
        time.sleep(0.1)
        assert ran == [] and registry.get(queued.id).state == operations_pb2.OPERATION_STATE_CANCELLED
    finally:
        registry.shutdown()
