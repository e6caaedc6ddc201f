"""Who may use the page: a login with the operator's token (or an authenticating proxy in front), a
signed session cookie, and a CSRF token in every form.

The session cookie is signed, not encrypted, and holds only ids: a session id, the CSRF token and
whether the login succeeded. The gRPC token never leaves the server. Forms carry the session's CSRF
token (synchroniser pattern) on top of SameSite=Lax cookies, so another site can neither post a form
nor read a page as the user.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from pathlib import Path

from fastapi import HTTPException, Request
from pydantic import SecretStr

from reviewstack.common import errors
from reviewstack.common.grpc.auth import TokenSource
from reviewstack.web.settings import WebSettings

FAILED_LOGIN_DELAY_S = 1.0  # a guesser gets one try a second per connection; a person barely notices


class NotLoggedIn(Exception):
    """Raised by `require_login`; the app turns it into a redirect to /login (pages) or a 401 (data)."""


def session_secret(settings: WebSettings) -> str:
    """The key that signs session cookies: the operator's, or a random one for this process."""
    if settings.session_secret is not None and settings.session_secret_file is not None:
        raise errors.InvalidArgument(
            "both session_secret and session_secret_file are set; set one "
            "(REVIEWSTACK_SESSION_SECRET or REVIEWSTACK_SESSION_SECRET_FILE)"
        )
    if settings.session_secret_file is not None:
        return _read_secret(settings.session_secret_file, "REVIEWSTACK_SESSION_SECRET_FILE")
    if settings.session_secret is not None:
        value = settings.session_secret.get_secret_value().strip()
        if len(value) < 16:
            raise errors.InvalidArgument(
                "session_secret is shorter than 16 characters; use a long random one"
            )
        return value
    return secrets.token_urlsafe(32)


def _read_secret(path: Path, variable: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.FailedPrecondition(
            f"cannot read {path} ({variable}): {exc}; mount the Secret there"
        ) from exc
    if len(value) < 16:
        raise errors.FailedPrecondition(f"{path} ({variable}) holds fewer than 16 characters; use a long key")
    return value


class Access:
    """The login policy of one page: token login or a proxy in front."""

    def __init__(self, settings: WebSettings) -> None:
        self.mode = settings.login
        self.tokens = TokenSource.of(settings.login_token, settings.login_token_file, "login_token")
        if self.mode == "token" and not self.tokens.enabled:
            raise errors.FailedPrecondition(
                "login=token needs a login token: set REVIEWSTACK_LOGIN_TOKEN_FILE (a mounted Secret) or "
                "REVIEWSTACK_LOGIN_TOKEN; behind an authenticating proxy set REVIEWSTACK_LOGIN=proxy instead"
            )

    @staticmethod
    def session_id(request: Request) -> str:
        """This browser's session id (made on first visit): reviews belong to the session that made them."""
        session = request.session
        if "sid" not in session:
            session["sid"] = secrets.token_urlsafe(16)
        return str(session["sid"])

    @staticmethod
    def csrf_token(request: Request) -> str:
        session = request.session
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(32)
        return str(session["csrf"])

    def logged_in(self, request: Request) -> bool:
        return self.mode == "proxy" or bool(request.session.get("auth"))

    def require_login(self, request: Request) -> str:
        """The session id of a logged-in browser; NotLoggedIn otherwise."""
        if not self.logged_in(request):
            raise NotLoggedIn()
        return self.session_id(request)

    @staticmethod
    def check_csrf(request: Request, presented: str | None) -> None:
        """403 unless the form carries this session's CSRF token."""
        expected = request.session.get("csrf")
        if not expected or not presented or not hmac.compare_digest(str(expected), presented):
            raise HTTPException(
                403,
                "the form is stale or came from another site (CSRF check failed): "
                "reload the page and send it again",
            )

    async def log_in(self, request: Request, token: SecretStr) -> bool:
        """Start a new session when `token` is the login token. A new session id and CSRF token on
        success, so a session id planted before the login is worth nothing after it."""
        expected = self.tokens.current()
        presented = token.get_secret_value().strip().encode()
        if expected is None or not hmac.compare_digest(presented, expected):
            await asyncio.sleep(FAILED_LOGIN_DELAY_S)
            return False
        request.session.clear()
        request.session["auth"] = True
        self.session_id(request)
        self.csrf_token(request)
        return True

    @staticmethod
    def log_out(request: Request) -> None:
        request.session.clear()
