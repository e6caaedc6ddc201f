"""Bearer-token auth: one shared secret per deployment, sent as `authorization: Bearer <token>`.

The token comes from `auth_token` or, in the cluster, from `auth_token_file` (a mounted Secret).
Kubernetes updates a mounted Secret in place, so the file is re-read whenever its stat changes and a
rotated token takes effect without a restart. Health and reflection stay open: kubelet probes and
`grpcurl list` carry no token.
"""

from __future__ import annotations

import hmac
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
from pydantic import SecretStr

from reviewstack.common import errors
from reviewstack.common.grpc.interceptors import Call, LayerInterceptor
from reviewstack.common.logging import get_logger
from reviewstack.common.settings import ServerSettings

log = get_logger(__name__)

AUTH_METADATA_KEY = "authorization"
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
_HOW = f"send metadata '{AUTH_METADATA_KEY}: Bearer <token>' with the server's token"


class TokenSource:
    """The expected token: fixed, or read from a file and re-read when the file changes."""

    def __init__(self, token: str | None = None, path: Path | None = None) -> None:
        if token is not None and path is not None:
            raise errors.InvalidArgument(
                "both auth_token and auth_token_file are set; set one "
                "(REVIEWSTACK_AUTH_TOKEN or REVIEWSTACK_AUTH_TOKEN_FILE)"
            )
        self._fixed = token.encode() if token is not None else None
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._cached: bytes | None = None
        if path is not None:
            # an unreadable Secret at start is a deployment error: refuse to serve without auth
            self._stamp, self._cached = self._read(path)

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> TokenSource:
        return cls.of(settings.auth_token, settings.auth_token_file)

    @classmethod
    def of(cls, secret: SecretStr | None, path: Path | None, setting: str = "auth_token") -> TokenSource:
        """The token a pair of settings names (`<setting>` or `<setting>_file`, one of them at most): the
        gRPC services', the engine's, and the one the Review service sends its backend."""
        token = secret.get_secret_value().strip() if secret is not None else None
        variable = f"REVIEWSTACK_{setting.upper()}"
        if token is not None and not token:
            raise errors.InvalidArgument(
                f"{setting} is empty; unset {variable} to turn auth off, or set a token"
            )
        if token is not None and path is not None:
            raise errors.InvalidArgument(
                f"both {setting} and {setting}_file are set; set one ({variable} or {variable}_FILE)"
            )
        return cls(token=token, path=path)

    @property
    def enabled(self) -> bool:
        return self._fixed is not None or self._path is not None

    def current(self) -> bytes | None:
        """The token to check against now (None = auth off). One stat() per call; reads on change."""
        if self._path is None:
            return self._fixed
        try:
            st = os.stat(self._path)
        except OSError as exc:
            # mid-rotation the file can vanish for a moment: keep serving with the last good token
            log.warning(
                "auth token file unreadable; keeping the previous token", path=str(self._path), error=str(exc)
            )
            return self._cached
        stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    try:
                        self._stamp, self._cached = self._read(self._path)
                        log.info("auth token reloaded", path=str(self._path))
                    except errors.ReviewStackError as exc:
                        log.warning("auth token file unusable; keeping the previous token", error=str(exc))
        return self._cached

    @staticmethod
    def _read(path: Path) -> tuple[tuple[int, int, int], bytes]:
        try:
            st = os.stat(path)
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise errors.FailedPrecondition(
                f"cannot read the auth token file {path}: {exc}; mount the Secret there, "
                "or unset REVIEWSTACK_AUTH_TOKEN_FILE to run without auth"
            ) from exc
        if not token:
            raise errors.FailedPrecondition(f"the auth token file {path} is empty; put the token in it")
        return (st.st_mtime_ns, st.st_ino, st.st_size), token.encode()


def check_bearer(
    header: str | None,
    expected: bytes,
    how: str = _HOW,
    carrier: str = f"'{AUTH_METADATA_KEY}' metadata",
    missing: str = "missing credentials",
) -> str | None:
    """None when `header` carries the expected token, else why not, with `how` to send it (gRPC
    metadata here, an HTTP header for the engine)."""
    if not header:
        return f"{missing}: {how}"
    scheme, _, presented = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return f"malformed {carrier}: {how}"
    # constant-time compare so the token cannot be guessed byte by byte from response times
    if not hmac.compare_digest(presented.strip().encode(), expected):
        return f"invalid bearer token: {how}"
    return None


class AuthInterceptor(LayerInterceptor):
    """UNAUTHENTICATED unless the call carries the token; health and reflection stay open."""

    def __init__(self, tokens: TokenSource) -> None:
        self.tokens = tokens

    def applies(self, full_method: str) -> bool:
        return self.tokens.enabled and not full_method.startswith(OPEN_PREFIXES)

    @asynccontextmanager
    async def around(self, call: Call) -> AsyncIterator[None]:
        expected = self.tokens.current()
        if expected is not None:
            problem = check_bearer(call.metadata(AUTH_METADATA_KEY), expected)
            if problem is not None:
                await call.context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
        yield
