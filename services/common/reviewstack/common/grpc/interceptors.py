"""Server interceptors: each cross-cutting concern is one small async context manager around a call.

grpc.aio interceptors only get to wrap the *method handler*; to see the request, the context and the
outcome they must replace the handler's behaviour with their own. `LayerInterceptor` does that once,
for every call shape, and lets a concern be written as `around(call)`: code before `yield` runs before
the handler, an exception raised by the handler (or by an inner layer) arrives at the `yield`, and code
after it sees the outcome. The server installs the layers outermost first:

    RequestLogInterceptor → AuthInterceptor → MetricsInterceptor → ExceptionInterceptor → DeadlineInterceptor

so the access log sees every call (rejected ones included), metrics count only authenticated calls, and
the exception mapper turns handler errors into a status before metrics and the log read it.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pydantic
import structlog

from reviewstack.common import errors
from reviewstack.common.logging import get_logger

log = get_logger(__name__)

REQUEST_ID_KEY = "x-request-id"
# The id of the call being served, readable from any code the handler runs (and copied into operation
# worker threads); empty outside a call.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("reviewstack_request_id", default="")
# A client-chosen id is echoed into logs and metadata, so it must be short and printable.
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:/=+-]{1,128}$")
# Health probes arrive every few seconds; logging each at INFO would drown the real calls.
QUIET_PREFIXES = ("/grpc.health.v1.Health/",)


def current_request_id() -> str:
    """The request id of the call this code runs under ("" outside a call)."""
    return REQUEST_ID.get()


@dataclass(frozen=True)
class Call:
    """What a layer knows about one call."""

    full_method: str  # "/reviewstack.v1.DataPrep/ListDatasets"
    context: grpc.aio.ServicerContext
    response_streaming: bool
    deadline_at: float | None = field(default=None, init=False)  # monotonic; read while the call is alive

    def __post_init__(self) -> None:
        remaining = self.context.time_remaining()
        object.__setattr__(self, "deadline_at", None if remaining is None else time.monotonic() + remaining)

    @property
    def service(self) -> str:
        return self.full_method.lstrip("/").partition("/")[0]

    @property
    def method(self) -> str:
        return self.full_method.rpartition("/")[2]

    def metadata(self, key: str) -> str | None:
        """The first value of an invocation metadata key (keys arrive lower-case)."""
        for item in self.context.invocation_metadata() or ():
            if item.key == key:
                value = item.value
                return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        return None


def status_of(call: Call, exc: BaseException | None) -> grpc.StatusCode:
    """The status a call ends with, as seen from a layer that the outcome passed through."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        # grpc cancels the handler's task when the client goes away or its deadline passes; the context
        # of a call whose client has gone must not be touched (grpc may have freed it)
        if call.deadline_at is not None and time.monotonic() >= call.deadline_at:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    code = call.context.code()
    if exc is None:
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code
    # an exception nobody mapped: grpc answers it with UNKNOWN
    return grpc.StatusCode.UNKNOWN


class LayerInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor written as `around(call)`; subclasses override `around` (and `applies`)."""

    def applies(self, full_method: str) -> bool:
        """Whether this layer wraps calls of this method at all (default: every method)."""
        return True

    def around(self, call: Call) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.applies(method):
            return handler
        return _wrap_handler(handler, method, self.around)


Around = Callable[[Call], AbstractAsyncContextManager[None]]


def _wrap_handler(handler: grpc.RpcMethodHandler, method: str, around: Around) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour run inside `around(call)`."""
    streaming_out = handler.response_streaming
    if handler.request_streaming and streaming_out:
        kind, factory = "stream_stream", grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        kind, factory = "stream_unary", grpc.stream_unary_rpc_method_handler
    elif streaming_out:
        kind, factory = "unary_stream", grpc.unary_stream_rpc_method_handler
    else:
        kind, factory = "unary_unary", grpc.unary_unary_rpc_method_handler
    behavior = getattr(handler, kind)

    # grpc.aio picks how to drive a handler from its function type, so the wrapper must have the same
    # type as what it wraps: coroutine function, or async generator function.
    if inspect.isasyncgenfunction(behavior):

        async def wrapped_gen(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with around(Call(method, context, streaming_out)):
                async for response in behavior(request, context):
                    yield response

        new_behavior: Any = wrapped_gen
    else:
        if not inspect.iscoroutinefunction(behavior):
            behavior = _refuse_sync(method)

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with around(Call(method, context, streaming_out)):
                return await behavior(request, context)

        new_behavior = wrapped
    return factory(
        new_behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _refuse_sync(method: str) -> Callable[..., Awaitable[Any]]:
    """A sync handler would block the event loop and get an async context it cannot use: refuse it
    loudly (INTERNAL + a log line naming the method) instead of running it half-broken."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise TypeError(f"handler of {method} is not `async def`; review-stack servicers must be async")

    return refuse


class RequestLogInterceptor(LayerInterceptor):
    """Request id (from `x-request-id` or new) into the log context and trailing metadata; one access
    log line per call with method, code and duration."""

    @asynccontextmanager
    async def around(self, call: Call) -> AsyncIterator[None]:
        incoming = call.metadata(REQUEST_ID_KEY)
        request_id = incoming if incoming and _REQUEST_ID_OK.match(incoming) else uuid.uuid4().hex
        # Each RPC runs in its own asyncio task with its own copy of the context, so binding here cannot
        # leak into other calls; no reset needed (a reset could fail when a stream is closed elsewhere).
        REQUEST_ID.set(request_id)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        # set before the handler runs so that an abort anywhere below still carries it
        call.context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        # read now: once a stream's client has gone, grpc's cython context may be freed, and peer() on it
        # crashed the process (SIGSEGV after a WatchOperation the client closed)
        peer = call.context.peer()
        start = time.perf_counter()
        failure: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if failure is None:
                _keep_request_id(call.context, request_id)
            code = status_of(call, failure)
            quiet = call.full_method.startswith(QUIET_PREFIXES)
            level = "debug" if quiet else "info"
            if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                level = "warning"
            getattr(log, level)(
                "grpc call",
                method=call.full_method,
                code=code.name,
                duration_ms=round((time.perf_counter() - start) * 1000, 2),
                peer=peer,
            )


def _keep_request_id(context: grpc.aio.ServicerContext, request_id: str) -> None:
    """Re-add the request id when a handler replaced the trailing metadata with its own."""
    trailing = tuple(context.trailing_metadata() or ())
    if not any(key == REQUEST_ID_KEY for key, _ in trailing):
        context.set_trailing_metadata((*trailing, (REQUEST_ID_KEY, request_id)))


class ExceptionInterceptor(LayerInterceptor):
    """Exceptions → statuses a client can act on; never a traceback on the wire.

    ReviewStackError → its grpc_code and message; pydantic.ValidationError → INVALID_ARGUMENT with the
    field errors; anything else → INTERNAL naming the request id, with the traceback in the server log.
    """

    @asynccontextmanager
    async def around(self, call: Call) -> AsyncIterator[None]:
        try:
            yield
        except grpc.aio.AbortError:
            raise  # already a status (grpc checks it is the very same exception object)
        except Exception as exc:
            if call.context.done():
                raise  # status already sent; nothing left to map
            code, message = map_exception(exc, call.full_method)
            await call.context.abort(code, message)


def map_exception(exc: Exception, where: str) -> tuple[grpc.StatusCode, str]:
    """Status code and client-facing message for an exception (logs the traceback of unexpected ones)."""
    if isinstance(exc, errors.ReviewStackError):
        return exc.grpc_code, str(exc)
    if isinstance(exc, pydantic.ValidationError):
        return grpc.StatusCode.INVALID_ARGUMENT, format_validation_error(exc)
    log.error("unhandled exception", method=where, exc_info=exc)
    return (
        grpc.StatusCode.INTERNAL,
        f"internal error (request id {current_request_id() or 'none'}); see the server log",
    )


def format_validation_error(exc: pydantic.ValidationError) -> str:
    """ "invalid request: a.b: msg; c: msg" — field paths and reasons, no pydantic URLs."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(request)"
        parts.append(f"{where}: {err['msg']}")
    return "invalid request: " + "; ".join(parts)


class DeadlineInterceptor(LayerInterceptor):
    """Cuts a unary call whose client set no deadline at `default_s` (DEADLINE_EXCEEDED).

    A client without a deadline would otherwise hold a server task forever when a dependency hangs.
    Streams are exempt: WatchOperation and token streams legitimately outlive any fixed bound.
    """

    def __init__(self, default_s: float) -> None:
        self.default_s = default_s

    @asynccontextmanager
    async def around(self, call: Call) -> AsyncIterator[None]:
        if call.response_streaming or call.context.time_remaining() is not None:
            yield
            return
        timeout = asyncio.timeout(self.default_s)
        try:
            async with timeout:
                yield
        except TimeoutError:
            if not timeout.expired():
                raise  # the handler's own TimeoutError: the exception mapper handles it
            await call.context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the call set no deadline and ran past the server's default of {self.default_s:g} s; "
                "set a deadline (timeout) on the call if it needs longer",
            )
