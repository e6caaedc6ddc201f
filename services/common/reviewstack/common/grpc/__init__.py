"""The gRPC bootstrap every review-stack service shares: server, interceptors, operations, clients.

A service's main.py builds its servicers and calls `run_server(settings, [ServiceRegistration(...)],
operations)`; everything cross-cutting (auth, request ids, access log, metrics, error mapping, default
deadlines, health, reflection, graceful shutdown) happens here, once.

Note: inside this package `import grpc` still means the grpcio library (absolute imports).
"""

from reviewstack.common.grpc.auth import AUTH_METADATA_KEY, TokenSource
from reviewstack.common.grpc.client import (
    error_from_rpc,
    follow_operation,
    make_channel,
    wait_operation,
    wait_until_serving,
    wait_until_serving_async,
)
from reviewstack.common.grpc.interceptors import REQUEST_ID_KEY, current_request_id
from reviewstack.common.grpc.operations import (
    OperationRegistry,
    OperationsServicer,
    ProgressReporter,
    is_terminal,
)
from reviewstack.common.grpc.server import GrpcServer, ServiceRegistration, run_server, serve

__all__ = [
    "AUTH_METADATA_KEY",
    "REQUEST_ID_KEY",
    "GrpcServer",
    "OperationRegistry",
    "OperationsServicer",
    "ProgressReporter",
    "ServiceRegistration",
    "TokenSource",
    "current_request_id",
    "error_from_rpc",
    "follow_operation",
    "is_terminal",
    "make_channel",
    "run_server",
    "serve",
    "wait_operation",
    "wait_until_serving",
    "wait_until_serving_async",
]
