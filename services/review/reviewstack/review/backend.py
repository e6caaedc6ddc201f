"""The generation backend, reached through TGI's own client (`text-generation`): TGI in the cluster, the
embedded engine on one machine. Failures become errors a caller can act on: unreachable after bounded
retries → Unavailable; overloaded → ResourceExhausted; a request the backend refuses → InvalidArgument; a
token it refuses → FailedPrecondition (this service's configuration, not the caller's request).

What is retried: failures after which nothing was consumed and the request is safe to send again
(generation has no side effects) — the backend could not be reached or closed the connection before it
answered (`ClientConnectionError`: refused, reset, disconnected: a restart or a rolling update), its answer
broke off before it was read whole (`ClientPayloadError`: it died mid-response), or it was still loading.
A stream is retried only before its first token: the tokens already passed on cannot be taken back. A
timeout is not retried: the call already took `timeout_s`, and sending it again would take as long.

With a TokenSource (REVIEWSTACK_BACKEND_AUTH_TOKEN or _FILE, re-read when the file changes) every call
carries `Authorization: Bearer <token>`, as the embedded engine requires when it has a token.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from text_generation import AsyncClient
from text_generation import errors as tgi_errors

from reviewstack.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from reviewstack.common.grpc.auth import TokenSource
from reviewstack.common.logging import get_logger

log = get_logger(__name__)
PENALTY_HEADER = "X-Refusal-Penalty"
_TOKEN_HINT = (
    "set REVIEWSTACK_BACKEND_AUTH_TOKEN or REVIEWSTACK_BACKEND_AUTH_TOKEN_FILE to the backend's token"
)


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int
    temperature: float  # 0 = greedy
    top_p: float  # 0 = off
    seed: int | None
    refusal_penalty: float
    repetition_penalty: float = 1.0  # 1 = off
    stop: tuple[str, ...] = ()  # TGI stop sequences: the text ends right after the first one written


@dataclass(frozen=True)
class Generated:
    text: str
    tokens: int


@dataclass(frozen=True)
class BackendInfo:
    model: str
    per_request_penalty: bool  # the embedded engine takes λ per request; TGI has one per deployment
    penalty_max: float | None


class Backend:
    def __init__(
        self,
        url: str,
        timeout_s: float = 600.0,
        retries: int = 3,
        retry_delay_s: float = 0.5,
        tokens: TokenSource | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self.tokens = tokens or TokenSource()
        self._info: BackendInfo | None = None

    async def info(self) -> BackendInfo:
        if self._info is None:
            body = await self._retrying(self._get_info)
            penalty = body.get("refusal_penalty") or {}
            self._info = BackendInfo(str(body.get("model_id", "unknown")), bool(penalty), penalty.get("max"))
        return self._info

    def _headers(self) -> dict[str, str]:
        token = self.tokens.current()
        return {"Authorization": f"Bearer {token.decode()}"} if token is not None else {}

    async def _get_info(self) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=min(self.timeout_s, 30))
        async with (
            aiohttp.ClientSession(timeout=timeout, headers=self._headers()) as session,
            session.get(f"{self.url}/info") as reply,
        ):
            if reply.status == 401:
                raise FailedPrecondition(
                    f"the generation backend {self.url} refused this service's credentials (HTTP 401: "
                    f"{(await reply.text())[:300]}); {_TOKEN_HINT}"
                )
            if reply.status != 200:
                raise Unavailable(f"generation backend {self.url} answered /info with HTTP {reply.status}")
            return json.loads(await reply.text())

    def _client(self, decoding: Decoding) -> AsyncClient:
        headers = {PENALTY_HEADER: repr(decoding.refusal_penalty), **self._headers()}
        return AsyncClient(self.url, headers=headers, timeout=int(self.timeout_s))

    @staticmethod
    def options(decoding: Decoding) -> dict[str, Any]:
        """The TGI parameters a decoding is sent as: temperature 0 is greedy, top_p 0 or 1 is off."""
        sampling = decoding.temperature > 0
        return {
            "max_new_tokens": decoding.max_new_tokens,
            "do_sample": sampling,
            "temperature": decoding.temperature if sampling else None,
            "top_p": decoding.top_p if sampling and 0 < decoding.top_p < 1 else None,
            "seed": decoding.seed,
            "repetition_penalty": decoding.repetition_penalty if decoding.repetition_penalty != 1 else None,
            "stop_sequences": list(decoding.stop) or None,
        }

    async def generate(self, prompt: str, decoding: Decoding) -> Generated:
        client = self._client(decoding)

        async def call() -> Generated:
            reply = await client.generate(prompt, **self.options(decoding))
            return Generated(reply.generated_text, reply.details.generated_tokens)

        return await self._retrying(call)

    async def stream(self, prompt: str, decoding: Decoding) -> AsyncIterator[tuple[str, Generated | None]]:
        """Token texts as they come; the last item carries the whole result. Retries only before the first
        token: a stream that broke halfway cannot be resumed."""
        client = self._client(decoding)
        attempt = 0
        while True:
            tokens = 0
            try:
                async for event in client.generate_stream(prompt, **self.options(decoding)):
                    tokens += 1
                    done = None
                    if event.details is not None:
                        done = Generated(event.generated_text or "", event.details.generated_tokens)
                    yield (event.token.text if not event.token.special else ""), done
                    if done is not None:
                        return
                raise Unavailable(  # a connection closed cleanly mid-stream: no error, but no end either
                    f"the generation backend {self.url} ended the stream after {tokens} tokens without its "
                    "last event; ask for the review again"
                )
            except Unavailable:
                raise
            except Exception as exc:
                attempt += 1
                if tokens:
                    raise self._broken_stream(exc, tokens) from exc
                if not self._retryable(exc) or attempt > self.retries:
                    raise self._translate(exc) from exc
                log.warning("generation backend stream failed, retrying", url=self.url, error=repr(exc))
                await asyncio.sleep(self.retry_delay_s * 2 ** (attempt - 1))

    async def _retrying(self, call: Any) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return await call()
            except Exception as exc:
                if not self._retryable(exc) or attempt == self.retries:
                    raise self._translate(exc) from exc
                log.warning("generation backend call failed, retrying", url=self.url, error=repr(exc))
                await asyncio.sleep(self.retry_delay_s * 2**attempt)
        raise AssertionError("unreachable")

    @staticmethod
    def _retryable(exc: Exception) -> bool:
        if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ConnectionTimeoutError):
            return False  # it took the whole timeout: again would take as long
        return isinstance(
            exc,
            aiohttp.ClientConnectionError
            | aiohttp.ClientPayloadError
            | tgi_errors.ShardNotReadyError
            | Unavailable,
        )

    def _broken_stream(self, exc: Exception, tokens: int) -> Exception:
        translated = self._translate(exc)
        if not isinstance(translated, Unavailable) or not self._retryable(exc):
            return translated
        return Unavailable(
            f"the generation backend {self.url} broke off after {tokens} streamed tokens "
            f"({type(exc).__name__}: {exc}); a stream cannot be resumed: check that the backend runs "
            "(its /health), then ask for the review again"
        )

    def _translate(self, exc: Exception) -> Exception:
        if isinstance(exc, tgi_errors.OverloadedError | tgi_errors.RateLimitExceededError):
            return ResourceExhausted(f"the generation backend {self.url} is overloaded: {exc}; retry later")
        if isinstance(exc, tgi_errors.ValidationError | tgi_errors.BadRequestError):
            return InvalidArgument(f"the generation backend refused the request: {exc}")
        if isinstance(exc, tgi_errors.UnknownError):  # an HTTP error TGI's client has no class for: 401, …
            return FailedPrecondition(
                f"the generation backend {self.url} refused the call: {exc}; if it requires a bearer token, "
                f"{_TOKEN_HINT}"
            )
        if isinstance(exc, Unavailable | InvalidArgument | ResourceExhausted | FailedPrecondition):
            return exc
        if isinstance(exc, TimeoutError) and not self._retryable(exc):
            return Unavailable(
                f"the generation backend {self.url} did not answer within {self.timeout_s:g} s "
                "(REVIEWSTACK_BACKEND_TIMEOUT_S): ask for fewer max_new_tokens, or raise the timeout"
            )
        if self._retryable(exc):
            return Unavailable(
                f"the generation backend {self.url} is unreachable after {self.retries + 1} tries "
                f"({type(exc).__name__}: {exc}); check that it runs (its /health answers 200) and that "
                "REVIEWSTACK_BACKEND_URL names it, then ask for the review again"
            )
        return Unavailable(
            f"the generation backend {self.url} failed: {type(exc).__name__}: {exc}; ask for the review "
            "again, and if it fails again, see the backend's log"
        )
