"""The generation backend, reached through TGI's own client (`text-generation`): TGI in the cluster, the
embedded engine on one machine. Failures become errors a caller can act on: unreachable after bounded
retries → Unavailable; overloaded → ResourceExhausted; a request the backend refuses → InvalidArgument.
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

from reviewstack.common.errors import InvalidArgument, ResourceExhausted, Unavailable
from reviewstack.common.logging import get_logger

log = get_logger(__name__)
PENALTY_HEADER = "X-Refusal-Penalty"


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
        self, url: str, timeout_s: float = 600.0, retries: int = 3, retry_delay_s: float = 0.5
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self._info: BackendInfo | None = None

    async def info(self) -> BackendInfo:
        if self._info is None:
            body = await self._retrying(self._get_info)
            penalty = body.get("refusal_penalty") or {}
            self._info = BackendInfo(str(body.get("model_id", "unknown")), bool(penalty), penalty.get("max"))
        return self._info

    async def _get_info(self) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=min(self.timeout_s, 30))
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{self.url}/info") as reply,
        ):
            if reply.status != 200:
                raise Unavailable(f"generation backend {self.url} answered /info with HTTP {reply.status}")
            return json.loads(await reply.text())

    def _client(self, decoding: Decoding) -> AsyncClient:
        headers = {PENALTY_HEADER: repr(decoding.refusal_penalty)}
        return AsyncClient(self.url, headers=headers, timeout=int(self.timeout_s))

    @staticmethod
    def _options(decoding: Decoding) -> dict[str, Any]:
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
            reply = await client.generate(prompt, **self._options(decoding))
            return Generated(reply.generated_text, reply.details.generated_tokens)

        return await self._retrying(call)

    async def stream(self, prompt: str, decoding: Decoding) -> AsyncIterator[tuple[str, Generated | None]]:
        """Token texts as they come; the last item carries the whole result. Retries only before the first
        token: a stream that broke halfway cannot be resumed."""
        client = self._client(decoding)
        attempt = 0
        while True:
            started = False
            try:
                async for event in client.generate_stream(prompt, **self._options(decoding)):
                    started = True
                    done = None
                    if event.details is not None:
                        done = Generated(event.generated_text or "", event.details.generated_tokens)
                    yield (event.token.text if not event.token.special else ""), done
                return
            except Exception as exc:
                attempt += 1
                if started or not self._retryable(exc) or attempt > self.retries:
                    raise self._translate(exc) from exc
                await asyncio.sleep(self.retry_delay_s * 2 ** (attempt - 1))

    async def _retrying(self, call: Any) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return await call()
            except Exception as exc:
                if not self._retryable(exc) or attempt == self.retries:
                    raise self._translate(exc) from exc
                log.warning("generation backend call failed, retrying", url=self.url, error=str(exc))
                await asyncio.sleep(self.retry_delay_s * 2**attempt)
        raise AssertionError("unreachable")

    @staticmethod
    def _retryable(exc: Exception) -> bool:
        return isinstance(
            exc,
            aiohttp.ClientConnectionError
            | asyncio.TimeoutError
            | tgi_errors.ShardNotReadyError
            | Unavailable,
        )

    def _translate(self, exc: Exception) -> Exception:
        if isinstance(exc, tgi_errors.OverloadedError | tgi_errors.RateLimitExceededError):
            return ResourceExhausted(f"the generation backend {self.url} is overloaded: {exc}; retry later")
        if isinstance(exc, tgi_errors.ValidationError | tgi_errors.BadRequestError):
            return InvalidArgument(f"the generation backend refused the request: {exc}")
        if isinstance(exc, Unavailable | InvalidArgument | ResourceExhausted):
            return exc
        if self._retryable(exc):
            return Unavailable(
                f"the generation backend {self.url} is unreachable after {self.retries + 1} tries "
                f"({type(exc).__name__}: {exc}); check that it runs and that the URL is right"
            )
        return Unavailable(f"the generation backend {self.url} failed: {type(exc).__name__}: {exc}")
