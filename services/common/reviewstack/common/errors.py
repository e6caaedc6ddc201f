"""Errors a user can act on.

Every error raised on purpose by review-stack code is a `ReviewStackError`: its message says what was
wrong, where, and what to do. The gRPC bootstrap maps each class to a status code, and the CLI prints the
message without a traceback, so the same error reads well from both.
"""

from __future__ import annotations

import grpc


class ReviewStackError(Exception):
    """Base class; `grpc_code` is the status a server answers with."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(ReviewStackError):
    """The request or input is malformed; retrying the same thing will fail again."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ReviewStackError):
    """A named thing (object, dataset, operation, folder) does not exist."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ReviewStackError):
    """Creating something that exists already, without asking to overwrite it."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ReviewStackError):
    """The system is not in a state where the request can run (e.g. an unwritable output)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(ReviewStackError):
    """Credentials were accepted but do not allow the operation."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(ReviewStackError):
    """A dependency (S3 endpoint, LLM endpoint, backend) cannot be reached; retrying may help."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ReviewStackError):
    """Too much load; retry later."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Cancelled(ReviewStackError):
    """The work was cancelled at a client's request."""

    grpc_code = grpc.StatusCode.CANCELLED
