"""Client side: channels that carry the bearer token, waiting for a server, following an operation.

The token travels as plain metadata through a client interceptor, not as call credentials: gRPC only
sends call credentials over TLS, and inside the cluster the services talk plaintext (a mesh or the
network policy provides transport security). Inside a server handler the channel also forwards the
current request id, so one id follows a request across services in the logs.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any, Literal, overload

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reviewstack.common import errors
from reviewstack.common.grpc.auth import AUTH_METADATA_KEY
from reviewstack.common.grpc.interceptors import REQUEST_ID_KEY, current_request_id
from reviewstack.common.grpc.operations import is_terminal
from reviewstack.v1 import operations_pb2, operations_pb2_grpc

_SERVING = health_pb2.HealthCheckResponse.SERVING


def _with_metadata(metadata: Any, token: str | None) -> list[tuple[str, str]]:
    items = [(k, v) for k, v in (metadata or ())]
    keys = {k for k, _ in items}
    if token and AUTH_METADATA_KEY not in keys:
        items.append((AUTH_METADATA_KEY, f"Bearer {token}"))
    request_id = current_request_id()
    if request_id and REQUEST_ID_KEY not in keys:
        items.append((REQUEST_ID_KEY, request_id))
    return items


class _SyncDetails(
    collections.namedtuple(
        "_SyncDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    """grpc.ClientCallDetails is abstract; this is a concrete, copyable one."""


class _SyncInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str | None) -> None:
        self._token = token

    def _details(self, d: grpc.ClientCallDetails) -> _SyncDetails:
        return _SyncDetails(
            d.method,
            d.timeout,
            _with_metadata(d.metadata, self._token),
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


class _AioInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    def __init__(self, token: str | None) -> None:
        self._token = token

    def _details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*_with_metadata(d.metadata, self._token))
        return grpc.aio.ClientCallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


@overload
def make_channel(target: str, token: str | None = None, *, aio: Literal[False] = False) -> grpc.Channel: ...
@overload
def make_channel(target: str, token: str | None = None, *, aio: Literal[True]) -> grpc.aio.Channel: ...
def make_channel(target: str, token: str | None = None, *, aio: bool = False) -> Any:
    """An insecure channel to `target` ("host:port") that sends `authorization: Bearer <token>`
    (when a token is given) and the current request id on every call."""
    if aio:
        return grpc.aio.insecure_channel(target, interceptors=[_AioInterceptor(token or None)])
    return grpc.intercept_channel(grpc.insecure_channel(target), _SyncInterceptor(token or None))


def wait_until_serving(channel: grpc.Channel, service: str = "", timeout: float = 30.0) -> None:
    """Block until the server reports `service` ("" = the whole server) SERVING; Unavailable after
    `timeout` seconds. Follows Health.Watch, so a server that is still loading is waited for."""
    deadline = time.monotonic() + timeout
    stub = health_pb2_grpc.HealthStub(channel)
    last = "no answer"
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            request = health_pb2.HealthCheckRequest(service=service)
            for response in stub.Watch(request, timeout=remaining, wait_for_ready=True):
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
                if response.status == _SERVING:
                    return
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                break
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    raise _not_serving(service, timeout, last)


async def wait_until_serving_async(
    channel: grpc.aio.Channel, service: str = "", timeout: float = 30.0
) -> None:
    """wait_until_serving for a grpc.aio channel."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    stub = health_pb2_grpc.HealthStub(channel)
    last = "no answer"
    while (remaining := deadline - loop.time()) > 0:
        try:
            request = health_pb2.HealthCheckRequest(service=service)
            async for response in stub.Watch(request, timeout=remaining, wait_for_ready=True):
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
                if response.status == _SERVING:
                    return
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                break
        await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
    raise _not_serving(service, timeout, last)


def _not_serving(service: str, timeout: float, last: str) -> errors.Unavailable:
    return errors.Unavailable(
        f"service {service or '(whole server)'!r} not SERVING after {timeout:g} s (last: {last}); "
        "is the server up and the address right?"
    )


def wait_operation(
    channel: grpc.Channel,
    operation_id: str,
    on_update: Callable[[operations_pb2.Operation], None] | None = None,
    timeout: float | None = None,
) -> operations_pb2.Operation:
    """Follow WatchOperation, calling `on_update` at every change, and return the finished operation.

    RPC failures come back as ReviewStackError (e.g. NotFound for an unknown id), so a CLI can print
    them like any other error.
    """
    stub = operations_pb2_grpc.OperationsStub(channel)
    request = operations_pb2.GetOperationRequest(id=operation_id)
    try:
        for op in stub.WatchOperation(request, timeout=timeout):
            if on_update is not None:
                on_update(op)
            if is_terminal(op):
                return op
        # the stream ended before the operation did (server draining): report where it stands
        op = stub.GetOperation(request, timeout=10)
    except grpc.RpcError as exc:
        raise error_from_rpc(exc) from None
    if is_terminal(op):
        return op
    raise errors.Unavailable(
        f"the server stopped streaming operation {operation_id} before it finished; watch it again"
    )


def follow_operation(channel: grpc.Channel, operation_id: str, result: Message, what: str) -> Message:
    """Follow an operation with the same progress display a local run shows; unpack its result into
    `result`, or raise a ReviewStackError saying how `what` ended (failed, cancelled) and why."""
    from reviewstack.common.progress import ProgressDisplay

    with ProgressDisplay() as progress:
        final = wait_operation(
            channel,
            operation_id,
            on_update=lambda op: progress.update(
                op.progress.stage or "waiting", op.progress.done, op.progress.total, op.progress.message
            ),
        )
    if final.state != operations_pb2.OPERATION_STATE_SUCCEEDED:
        state = operations_pb2.OperationState.Name(final.state).removeprefix("OPERATION_STATE_").lower()
        raise errors.ReviewStackError(f"{what} {state}: {final.error.message}")
    final.result.Unpack(result)
    return result


_ERRORS_BY_CODE: dict[grpc.StatusCode, type[errors.ReviewStackError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: errors.PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.CANCELLED: errors.Cancelled,
}


def error_from_rpc(exc: grpc.RpcError) -> errors.ReviewStackError:
    """The ReviewStackError for a failed call: the server's message, the class of its status code."""
    code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
    details: str = exc.details() or code.name  # type: ignore[attr-defined]
    cls = _ERRORS_BY_CODE.get(code, errors.ReviewStackError)
    return cls(f"{details} ({code.name})")
