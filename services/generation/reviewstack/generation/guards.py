"""What the engine checks before a request reaches a route: the bearer token, then the body's size.

Both are plain ASGI middleware, so they run before FastAPI reads or parses anything: a caller without the
token, or with a body over the limit, costs the engine a header lookup, not a JSON parse or a tokenizer
call. Errors are in the shape of the route asked for: TGI's (`{"error", "error_type"}`) and OpenAI's under
`/v1/`.

The token is the gRPC services' secret (`REVIEWSTACK_AUTH_TOKEN`, or `REVIEWSTACK_AUTH_TOKEN_FILE` re-read
when the file changes, through the same `TokenSource`). `/health` and `/metrics` stay open: kubelet probes
and Prometheus scrapes carry no token, and neither says anything about a request's content (the gRPC
services leave health and their metrics port open for the same reasons).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from reviewstack.common.grpc.auth import TokenSource, check_bearer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health", "/metrics"})
_HOW = "send the header 'Authorization: Bearer <token>' with the engine's token (its REVIEWSTACK_AUTH_TOKEN)"


def error_response(path: str, status: int, message: str, kind: str) -> JSONResponse:
    """An error as the route family words them: OpenAI's shape under /v1/, TGI's elsewhere."""
    if path.startswith("/v1/"):
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    else:
        body = {"error": message, "error_type": kind}
    return JSONResponse(body, status_code=status)


class BearerAuth:
    """401 unless the request carries the token; OPEN_PATHS and a TokenSource with auth off pass."""

    def __init__(self, app: ASGIApp, tokens: TokenSource) -> None:
        self.app, self.tokens = app, tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or not self.tokens.enabled:
            await self.app(scope, receive, send)
            return
        expected = self.tokens.current()
        problem = (
            None
            if expected is None
            else check_bearer(
                Headers(scope=scope).get("authorization"),
                expected,
                how=_HOW,
                carrier="Authorization header",
                missing="this engine requires a bearer token",
            )
        )
        if problem is None:
            await self.app(scope, receive, send)
            return
        response = error_response(scope["path"], 401, problem, "unauthorized")
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)


class BodyLimit:
    """413 for a body over `limit` bytes, decided from Content-Length before anything is read, or while
    a chunked body arrives; the body is read whole (it is bounded) and replayed to the app."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    def _too_large(self, scope: Scope, size: int | None) -> JSONResponse:
        told = f"is {size} bytes" if size is not None else "goes on"
        message = (
            f"the request body {told}, past this engine's limit of {self.limit} bytes "
            "(REVIEWSTACK_PAYLOAD_LIMIT): send a shorter prompt, or truncate it before sending"
        )
        return error_response(scope["path"], 413, message, "validation")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit():
                message = f"malformed Content-Length header {declared!r}: send the body's size in bytes"
                await error_response(scope["path"], 400, message, "validation")(scope, receive, send)
                return
            if int(declared) > self.limit:
                await self._too_large(scope, int(declared))(scope, receive, send)
                return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before its body arrived
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(scope, None)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body once, then the connection's own messages (a streaming response listens for disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
