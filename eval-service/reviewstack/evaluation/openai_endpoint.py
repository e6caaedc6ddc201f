"""An OpenAI-compatible chat endpoint (OpenAI, TGI's Messages API, vLLM, the embedded engine) as the
evaluation reaches it: for baseline reviews and for the LLM judge.

Retries are the `openai` client's own (exponential backoff with jitter, honouring Retry-After, on
connection errors, 408, 409, 429 and 5xx), bounded by `retries`. What is left after them becomes an
error a user can act on; `FATAL` ones (bad key, wrong URL or model) would fail every call the same way,
so callers stop a whole batch on them instead of recording one failure per paper.

The API key is read from an environment variable, never taken as an argument, so it appears in no
command line, lineage record or log line.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import openai

from reviewstack.common.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ReviewStackError,
    Unavailable,
)

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
FATAL: tuple[type[ReviewStackError], ...] = (PermissionDenied, NotFound)
T = TypeVar("T")


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # e.g. https://api.openai.com/v1, http://tgi:80/v1
    model: str
    api_key_env: str = DEFAULT_API_KEY_ENV
    retries: int = 4
    timeout_s: float = 600.0
    headers: Mapping[str, str] = field(default_factory=dict)
    # where a server's configured endpoint keeps its key (reviewstack.common.llm_endpoints); read at each
    # client, so a rotated Secret takes effect. Without it the key is the `api_key_env` variable (the CLI)
    api_key: Callable[[], str | None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument(
                f"base URL {self.url!r} is not an http(s) URL; give the endpoint's OpenAI base, "
                "e.g. https://api.openai.com/v1 or http://localhost:8080/v1"
            )
        if not self.model.strip():
            raise InvalidArgument(
                "no model named: give the model the endpoint serves (e.g. gpt-4-1106-preview)"
            )
        if self.retries < 0 or self.timeout_s <= 0:
            raise InvalidArgument("retries must be >= 0 and the timeout > 0 seconds")

    @property
    def url(self) -> str:
        """The base URL as lineage records it: without user:password or query (Azure keys live there)."""
        parts = urlsplit(self.base_url)
        netloc = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc.rpartition("@")[2]

    def client(self) -> openai.AsyncOpenAI:
        # a local engine or TGI takes no key; the client insists on one, so an unset variable sends a
        # placeholder and a 401 then names the variable to set
        key = (self.api_key() if self.api_key is not None else os.environ.get(self.api_key_env)) or "unset"
        return openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=key,
            max_retries=self.retries,
            timeout=self.timeout_s,
            default_headers=dict(self.headers),
        )

    def error(self, exc: openai.OpenAIError) -> ReviewStackError:
        """The client's error, after its retries, worded for the person running the evaluation."""
        where = f"{self.host} ({self.model})"
        if isinstance(exc, openai.AuthenticationError):
            fix = (
                "check the key its operator configured for this endpoint (llm_endpoints)"
                if self.api_key is not None
                else f"set {self.api_key_env} to a valid key"
            )
            return PermissionDenied(f"{where} refused the API key: {fix}")
        if isinstance(exc, openai.PermissionDeniedError):
            return PermissionDenied(f"{where} denied access: {_message(exc)}")
        if isinstance(exc, openai.NotFoundError):
            return NotFound(
                f"{self.url} has no model {self.model!r} or is no OpenAI-compatible base URL (it usually "
                f"ends in /v1): {_message(exc)}"
            )
        if isinstance(exc, openai.RateLimitError):
            return ResourceExhausted(
                f"{where} still rate-limits after {self.retries} retries: lower the concurrency or retry "
                f"later ({_message(exc)})"
            )
        if isinstance(exc, openai.APITimeoutError):
            return Unavailable(f"{where} did not answer within {self.timeout_s:g} s ({self.retries} retries)")
        if isinstance(exc, openai.APIConnectionError):
            return Unavailable(f"cannot reach {self.url} after {self.retries} retries: {exc}")
        if isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
            return Unavailable(f"{where} failed with HTTP {exc.status_code} after {self.retries} retries")
        if isinstance(exc, openai.APIStatusError):
            return InvalidArgument(f"{where} refused the request (HTTP {exc.status_code}): {_message(exc)}")
        return Unavailable(f"{where}: {exc}")


def _message(exc: openai.APIError) -> str:
    body = exc.body
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        return body["message"]
    if isinstance(body, Mapping) and isinstance(body.get("error"), str):  # TGI's own error shape
        return body["error"]
    return exc.message


def run_blocking(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, also when the caller is itself inside an
    event loop (a gRPC aio servicer): there, in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()
