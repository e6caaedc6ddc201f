"""The one server bootstrap: every review-stack service starts through `run_server` / `GrpcServer`.

It owns what each service would otherwise repeat: the port, the interceptor chain, health checking,
reflection, the Operations service, the metrics exporter and graceful shutdown. A service only says
which servicers it has (`ServiceRegistration`) and, when it needs time to load, flips its health.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from reviewstack.common import errors
from reviewstack.common.grpc.auth import AuthInterceptor, TokenSource
from reviewstack.common.grpc.interceptors import (
    DeadlineInterceptor,
    ExceptionInterceptor,
    RequestLogInterceptor,
)
from reviewstack.common.grpc.metrics import MetricsExporter, MetricsInterceptor
from reviewstack.common.grpc.operations import OperationRegistry, OperationsServicer
from reviewstack.common.logging import configure_logging, get_logger
from reviewstack.common.settings import ServerSettings
from reviewstack.v1 import operations_pb2, operations_pb2_grpc

log = get_logger(__name__)

OPERATIONS_SERVICE = operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class ServiceRegistration:
    """One servicer to serve: its full proto name, the generated add_*_to_server, the instance."""

    name: str  # "reviewstack.v1.DataPrep"
    add_to_server: Callable[[Any, grpc.aio.Server], None]  # dataprep_pb2_grpc.add_DataPrepServicer_to_server
    servicer: object


class _DrainingHealthServicer(health.aio.HealthServicer):
    """The standard aio health servicer, plus: Watch streams end once the server drains.

    A Watch stream (client-side health checking) never ends by itself, so it would hold every
    shutdown for the full grace period. On drain each watcher first gets NOT_SERVING (bounded wait),
    then its stream is closed with OK.
    """

    def __init__(self) -> None:
        super().__init__()
        self._watches: dict[asyncio.Task[Any], asyncio.Event] = {}
        self._ending = False

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        told = self._watches[task] = asyncio.Event()
        try:
            await super().Watch(request, _NotingContext(context, told))
        except asyncio.CancelledError:
            if not self._ending:
                raise  # the client went away
        finally:
            del self._watches[task]

    async def drain(self, wait_s: float = 1.0) -> None:
        """NOT_SERVING everywhere, then end the Watch streams."""
        await self.enter_graceful_shutdown()
        self._ending = True
        if self._watches:
            told = [asyncio.ensure_future(e.wait()) for e in self._watches.values()]
            _, pending = await asyncio.wait(told, timeout=wait_s)
            for f in pending:
                f.cancel()
        for task in list(self._watches):
            task.cancel()


class _NotingContext:
    """A servicer context that sets `told` once a NOT_SERVING response has been written."""

    def __init__(self, context: Any, told: asyncio.Event) -> None:
        self._context, self._told = context, told

    async def write(self, message: health_pb2.HealthCheckResponse) -> None:
        await self._context.write(message)
        if message.status == _NOT_SERVING:
            self._told.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class GrpcServer:
    """A grpc.aio server with review-stack's interceptors, health, reflection and Operations."""

    def __init__(
        self,
        settings: ServerSettings,
        services: list[ServiceRegistration],
        operations: OperationRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.services = list(services)
        if operations is not None:
            self.services.append(
                ServiceRegistration(
                    OPERATIONS_SERVICE,
                    operations_pb2_grpc.add_OperationsServicer_to_server,
                    OperationsServicer(operations),
                )
            )
        names = [s.name for s in self.services]
        if len(set(names)) != len(names):
            raise errors.InvalidArgument(f"a service is registered twice: {names}")
        self.operations = operations
        # read the token (file) now: a missing Secret must stop the process before it listens
        self._tokens = TokenSource.from_settings(settings)
        self._lock = threading.Lock()
        self._serving: dict[str, bool] = dict.fromkeys(names, True)  # what the service wants reported
        self._server: grpc.aio.Server | None = None
        self._health: _DrainingHealthServicer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exporter: MetricsExporter | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False
        self.port = 0

    @property
    def metrics_port(self) -> int | None:
        """The port of /metrics, or None when the exporter is off."""
        return self._exporter.port if self._exporter is not None else None

    async def start(self) -> int:
        """Bind, start serving and mark every service SERVING (unless set_serving said otherwise)."""
        if self._server is not None:
            raise RuntimeError("GrpcServer.start() called twice")
        if not self._tokens.enabled:
            log.warning(
                "auth is off: set REVIEWSTACK_AUTH_TOKEN or REVIEWSTACK_AUTH_TOKEN_FILE; "
                "any client that reaches this port may call it"
            )
        server = grpc.aio.server(
            interceptors=[
                RequestLogInterceptor(),
                AuthInterceptor(self._tokens),
                MetricsInterceptor(),
                ExceptionInterceptor(),
                DeadlineInterceptor(self.settings.default_deadline_s),
            ],
            # without this, grpc sets SO_REUSEPORT and a second server on a taken port starts silently
            options=[("grpc.so_reuseport", 0)],
        )
        for reg in self.services:
            reg.add_to_server(reg.servicer, server)
        self._health = _DrainingHealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [*(s.name for s in self.services), health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        if self.settings.metrics_port > 0:
            self._exporter = self._start_exporter()
        try:
            self.port = self._bind(server)
        except errors.ReviewStackError:
            if self._exporter is not None:
                self._exporter.stop()
                self._exporter = None
            raise
        self._server, self._loop = server, asyncio.get_running_loop()
        await self._publish()  # before start(): no probe may see SERVING for a service still loading
        await server.start()
        log.info(
            "grpc server started",
            host=self.settings.host,
            port=self.port,
            services=[s.name for s in self.services],
            auth=self._tokens.enabled,
            metrics_port=self.metrics_port,
        )
        return self.port

    def _start_exporter(self) -> MetricsExporter:
        host, port = self.settings.host, self.settings.metrics_port
        try:
            return MetricsExporter(host, port)
        except OSError as exc:
            raise errors.Unavailable(
                f"cannot serve metrics on {host}:{port}: {exc}; "
                "pick a free REVIEWSTACK_METRICS_PORT (0 = off)"
            ) from exc

    def _bind(self, server: grpc.aio.Server) -> int:
        host = self.settings.host
        address = f"[{host}]:{self.settings.port}" if ":" in host else f"{host}:{self.settings.port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            port, reason = 0, str(exc)
        else:
            reason = "the address is in use or invalid"
        if port == 0:
            raise errors.Unavailable(f"cannot listen on {address}: {reason}; pick a free REVIEWSTACK_PORT")
        return port

    def set_serving(self, name: str, serving: bool) -> None:
        """Report `name` SERVING or NOT_SERVING; "" (the whole server) is SERVING only while every name
        is. Callable before start() (applied at start), from the loop, or from any thread."""
        with self._lock:
            self._serving[name] = serving
        loop = self._loop
        if loop is None or self._stopped:
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._spawn_publish()
        else:
            loop.call_soon_threadsafe(self._spawn_publish)

    def _spawn_publish(self) -> None:
        task = asyncio.get_running_loop().create_task(self._publish())
        self._tasks.add(task)  # keep a reference until done, or the task may be collected early
        task.add_done_callback(self._tasks.discard)

    async def _publish(self) -> None:
        """Push the wanted statuses into the health servicer (it ignores them once draining)."""
        if self._health is None:
            return
        with self._lock:
            wanted = dict(self._serving)
        for name, ok in wanted.items():
            if name:
                await self._health.set(name, _SERVING if ok else _NOT_SERVING)
        await self._health.set("", _SERVING if all(wanted.values()) else _NOT_SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING at once, refuse new calls, give in-flight ones `grace` seconds
        (default settings.shutdown_grace_s), then cancel what is left."""
        if self._server is None or self._stopped:
            return
        self._stopped = True
        grace = self.settings.shutdown_grace_s if grace is None else grace
        assert self._health is not None
        log.info("grpc server draining", grace_s=grace)
        # watch streams would hold the grace period open: tell them, then end them
        await self._health.drain()
        if self.operations is not None:
            self.operations.end_watches()
        await self._server.stop(grace)
        if self._exporter is not None:
            self._exporter.stop()
        log.info("grpc server stopped")

    async def wait(self) -> None:
        """Return when the server has terminated."""
        if self._server is None:
            raise RuntimeError("GrpcServer.wait() before start()")
        # grpc awaits its own shutdown future here: cancelling this wait unshielded would cancel that
        # future, and a later stop(grace) would then cut in-flight calls instead of draining them
        await asyncio.shield(self._server.wait_for_termination())

    async def __aenter__(self) -> GrpcServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


OnStarted = Callable[[GrpcServer], Awaitable[None] | None]


async def serve(
    settings: ServerSettings,
    services: list[ServiceRegistration],
    operations: OperationRegistry | None = None,
    *,
    on_started: OnStarted | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain for settings.shutdown_grace_s and return.

    `on_started(server)` runs once the port is open, e.g. to kick off loading a model in a task and
    call `server.set_serving(name, True)` when it is ready.
    """
    server = GrpcServer(settings, services, operations)  # raises before anything is installed
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, _on_signal, sig, stop_requested)
            installed.append(sig)
        except (ValueError, RuntimeError, NotImplementedError):
            log.debug("signal handler not installed (not the main thread?)", signal=sig.name)
    try:
        await server.start()
        if on_started is not None:
            maybe = on_started(server)
            if maybe is not None:
                await maybe
        waiters = [asyncio.ensure_future(stop_requested.wait()), asyncio.ensure_future(server.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
    finally:
        await server.stop()
        if operations is not None:
            operations.shutdown()
        for sig in installed:
            loop.remove_signal_handler(sig)


def _on_signal(sig: signal.Signals, stop_requested: asyncio.Event) -> None:
    log.info("shutdown requested", signal=sig.name)
    stop_requested.set()


def run_server(
    settings: ServerSettings,
    services: list[ServiceRegistration],
    operations: OperationRegistry | None = None,
    *,
    on_started: OnStarted | None = None,
) -> None:
    """What a service's main.py calls: configure logging, serve until a signal, drain, return (exit 0).

    A startup error a user can fix (unreadable token file, port in use) is logged as one line and
    exits with status 2 instead of a traceback.
    """
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings, services, operations, on_started=on_started))
    except errors.ReviewStackError as exc:
        log.error("cannot start the server", error=str(exc))
        raise SystemExit(2) from None
