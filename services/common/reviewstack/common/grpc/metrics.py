"""Prometheus metrics of every gRPC call, and the /metrics HTTP exporter.

The metric objects are created once, at import, in prometheus_client's default registry: a second
server in the same process (tests, or two services embedded in one) shares them instead of failing
with "Duplicated timeseries". Labels follow the grpc-ecosystem/go-grpc-prometheus names so existing
dashboards apply.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from wsgiref.simple_server import WSGIServer

import prometheus_client

from reviewstack.common.grpc.interceptors import Call, LayerInterceptor, status_of

STARTED = prometheus_client.Counter(
    "reviewstack_grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_service", "grpc_method"],
)
HANDLED = prometheus_client.Counter(
    "reviewstack_grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
HANDLING_SECONDS = prometheus_client.Histogram(
    "reviewstack_grpc_server_handling_seconds",
    "Time from the handler's start to its status, in seconds.",
    ["grpc_service", "grpc_method"],
    # from health checks (~1 ms) to dataset listings on S3 and unary generation (tens of seconds)
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


class MetricsInterceptor(LayerInterceptor):
    """Counts each call and times it; the code is whatever the layers inside it settled on."""

    @asynccontextmanager
    async def around(self, call: Call) -> AsyncIterator[None]:
        service, method = call.service, call.method
        STARTED.labels(service, method).inc()
        start = time.perf_counter()
        failure: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            failure = exc
            raise
        finally:
            HANDLED.labels(service, method, status_of(call, failure).name).inc()
            HANDLING_SECONDS.labels(service, method).observe(time.perf_counter() - start)


class MetricsExporter:
    """prometheus_client's own HTTP server on a port, stoppable (tests start and stop several)."""

    def __init__(self, host: str, port: int) -> None:
        self._httpd: WSGIServer
        self._thread: threading.Thread
        self._httpd, self._thread = prometheus_client.start_http_server(port, addr=host)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
