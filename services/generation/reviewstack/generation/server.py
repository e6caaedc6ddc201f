"""The TGI HTTP protocol over the engine: `/generate`, `/generate_stream` (SSE), `/` (what the
`text-generation` client posts to), `/info`, `/health`, `/metrics`, and TGI's OpenAI-compatible Messages
API, `/v1/chat/completions` (with `/v1/models`), so OpenAI clients work against the engine as against TGI.

Errors are TGI's JSON (`{"error": ..., "error_type": ...}`) on TGI's routes and OpenAI's
(`{"error": {"message", "type", ...}}`) on `/v1/`, with the same status codes: 422 validation, 429
overloaded, 500 generation. λ of the refusal penalty comes per request in the `X-Refusal-Penalty` header
on every route, within the bounds `/info` reports; without it the deployment's default applies.

Before a route runs, `guards` checks the bearer token (when one is configured) and the body's size (413
beyond `payload_limit`). A route then checks what needs no tokens (parameters, `truncate`, `max_new_tokens`)
before it tokenizes or renders a chat template, and the token counts after.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reviewstack.common.generation_params import MAX_STOP_SEQUENCES
from reviewstack.common.grpc.auth import TokenSource
from reviewstack.generation import metrics
from reviewstack.generation.chat import ChatChunk, chat_events, chat_prompt, openai_error
from reviewstack.generation.engine import (
    EndEvent,
    Engine,
    ErrorEvent,
    Finished,
    Handle,
    Overloaded,
    TokenInfo,
)
from reviewstack.generation.guards import BearerAuth, BodyLimit
from reviewstack.generation.protocol import (
    REFUSAL_PENALTY_HEADER,
    ChatRequest,
    GenerateRequest,
    ValidationFailed,
    chat_parameters,
    check_inputs,
    check_parameters,
    refusal_penalty_from,
    validate,
)

PAYLOAD_LIMIT = 2_000_000  # bytes of a request body: TGI's --payload-limit default


@dataclass(frozen=True)
class ServerLimits:
    model_id: str
    model_dtype: str
    model_device_type: str
    max_input_tokens: int
    max_total_tokens: int
    max_concurrent_requests: int
    max_batch_size: int
    refusal_penalty: float
    refusal_penalty_max: float
    payload_limit: int = PAYLOAD_LIMIT


@dataclass(frozen=True)
class Failure:
    """A request refused before it reached the engine; each route family words it in its own shape."""

    status: int
    message: str
    kind: str


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": kind}, status_code=status)


def create_app(
    engine: Engine, limits: ServerLimits, version: str = "0.1.0", tokens: TokenSource | None = None
) -> FastAPI:
    """The engine's HTTP app; `tokens` (a TokenSource with a token) makes every route but /health and
    /metrics require it."""
    app = FastAPI(title="review-stack generation engine", version=version)
    app.add_middleware(BodyLimit, limit=limits.payload_limit)
    app.add_middleware(BearerAuth, tokens=tokens or TokenSource())  # added last: runs first

    @app.exception_handler(RequestValidationError)
    async def malformed(http: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.VALIDATION_FAILURE.inc()
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        if http.url.path.startswith("/v1/"):
            return openai_error(422, f"malformed request: {problems}", "validation")
        return _error(422, f"malformed request: {problems}", "validation")

    def checked(body: GenerateRequest, http: Request) -> float:
        """λ, once everything that needs no tokens passed: the cheap checks come first."""
        penalty = refusal_penalty_from(
            http.headers.get(REFUSAL_PENALTY_HEADER), limits.refusal_penalty, limits.refusal_penalty_max
        )
        check_inputs(body)
        check_parameters(
            body.parameters,
            max_input_tokens=limits.max_input_tokens,
            max_total_tokens=limits.max_total_tokens,
        )
        return penalty

    async def start(body: GenerateRequest, http: Request) -> Handle | Failure:
        metrics.REQUEST_COUNT.inc()
        try:
            penalty = checked(body, http)
            ids = await asyncio.to_thread(engine.tokenizer.encode, body.inputs, add_special_tokens=False)
            request = validate(
                body,
                ids,
                max_input_tokens=limits.max_input_tokens,
                max_total_tokens=limits.max_total_tokens,
                refusal_penalty=penalty,
            )
        except ValidationFailed as exc:
            metrics.VALIDATION_FAILURE.inc()
            return Failure(422, str(exc), "validation")
        problem = engine.problem
        if problem is not None:
            return Failure(500, f"the generation engine cannot serve now: {problem}", "generation")
        metrics.INPUT_LENGTH.observe(len(request.input_ids))
        try:
            return engine.submit(request, asyncio.get_running_loop())
        except Overloaded as exc:
            metrics.OVERLOADED.inc()
            return Failure(429, str(exc), "overloaded")

    async def finish(handle: Handle) -> Finished | Failure:
        try:
            while True:
                event = await handle.events.get()
                if isinstance(event, ErrorEvent):
                    return Failure(500, event.message, "generation")
                if isinstance(event, EndEvent):
                    return event.finished
        finally:
            handle.cancel()  # a client that went away frees its slot; a finished request ignores it

    async def complete(body: GenerateRequest, http: Request) -> JSONResponse:
        handle = await start(body, http)
        if isinstance(handle, Failure):
            return _error(handle.status, handle.message, handle.kind)
        finished = await finish(handle)
        if isinstance(finished, Failure):
            return _error(finished.status, finished.message, finished.kind)
        return JSONResponse(_response(body, finished))

    @app.post("/generate")
    async def generate(body: GenerateRequest, http: Request) -> JSONResponse:
        return await complete(body, http)

    @app.post("/generate_stream")
    async def generate_stream(body: GenerateRequest, http: Request) -> Response:
        handle = await start(body, http)
        if isinstance(handle, Failure):
            return _error(handle.status, handle.message, handle.kind)
        return StreamingResponse(_events(body, handle), media_type="text/event-stream")

    @app.post("/")
    async def compat(body: GenerateRequest, http: Request) -> Response:
        """TGI's compatibility route: the `text-generation` client posts here, `stream` decides."""
        if body.stream:
            return await generate_stream(body, http)
        response = await complete(body, http)
        if response.status_code != 200:
            return response
        return JSONResponse([json.loads(response.body)])

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, http: Request) -> Response:
        try:
            parameters = chat_parameters(body)
            check_parameters(
                parameters, max_input_tokens=limits.max_input_tokens, max_total_tokens=limits.max_total_tokens
            )
            prompt = await asyncio.to_thread(chat_prompt, engine.tokenizer, body)
            generate_body = GenerateRequest(inputs=prompt, parameters=parameters, stream=body.stream)
        except ValidationFailed as exc:
            metrics.VALIDATION_FAILURE.inc()
            return openai_error(422, str(exc), "validation")
        handle = await start(generate_body, http)
        if isinstance(handle, Failure):
            return openai_error(handle.status, handle.message, handle.kind)
        chunk = ChatChunk(limits.model_id, f"{version}-reviewstack")
        if body.stream:
            return StreamingResponse(
                chat_events(chunk, handle, body.include_usage), media_type="text/event-stream"
            )
        finished = await finish(handle)
        if isinstance(finished, Failure):
            return openai_error(finished.status, finished.message, finished.kind)
        return JSONResponse(chunk.completion(finished))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": limits.model_id, "object": "model", "created": 0, "owned_by": "reviewstack"}],
        }

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {
            "model_id": limits.model_id,
            "model_sha": None,
            "model_dtype": limits.model_dtype,
            "model_device_type": limits.model_device_type,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": limits.max_concurrent_requests,
            "max_best_of": 1,
            "max_stop_sequences": MAX_STOP_SEQUENCES,
            "max_input_tokens": limits.max_input_tokens,
            "max_total_tokens": limits.max_total_tokens,
            "max_batch_size": limits.max_batch_size,
            "validation_workers": 1,
            "max_client_batch_size": 1,
            "router": "reviewstack-generation",
            "version": version,
            "sha": None,
            "docker_label": None,
            "refusal_penalty": {
                "default": limits.refusal_penalty,
                "max": limits.refusal_penalty_max,
                "header": REFUSAL_PENALTY_HEADER,
            },
        }

    @app.get("/health")
    async def health() -> Response:
        problem = engine.problem
        if problem is None:
            return Response(status_code=200)
        return _error(503, f"the generation engine is unhealthy: {problem}", "unhealthy")

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def _token(info: TokenInfo) -> dict[str, Any]:
    return asdict(info)


def _full_text(body: GenerateRequest, text: str) -> str:
    return body.inputs + text if body.parameters.return_full_text else text


def _response(body: GenerateRequest, finished: Finished) -> dict[str, Any]:
    result: dict[str, Any] = {"generated_text": _full_text(body, finished.generated_text)}
    if body.parameters.details or body.parameters.decoder_input_details:
        result["details"] = {
            "finish_reason": finished.finish_reason,
            "generated_tokens": finished.generated_tokens,
            "seed": finished.seed,
            "prefill": [{"id": t.id, "text": t.text, "logprob": t.logprob} for t in finished.prefill],
            "tokens": [_token(t) for t in finished.tokens],
            "top_tokens": [[_token(t) for t in step] for step in finished.top_tokens] or None,
            "best_of_sequences": None,
        }
    return result


async def _events(body: GenerateRequest, handle: Handle) -> AsyncIterator[str]:
    index = 0
    try:
        while True:
            got = await handle.events.get()
            index += 1
            if isinstance(got, ErrorEvent):
                yield _sse({"error": got.message, "error_type": "generation"})
                return
            event: dict[str, Any] = {
                "index": index,
                "token": _token(got.token),
                "top_tokens": [_token(t) for t in got.top] if got.top else None,
                "generated_text": None,
                "details": None,
            }
            if isinstance(got, EndEvent):
                finished = got.finished
                event["generated_text"] = _full_text(body, finished.generated_text)
                event["details"] = {
                    "finish_reason": finished.finish_reason,
                    "generated_tokens": finished.generated_tokens,
                    "seed": finished.seed,
                    "input_length": finished.input_length,
                }
                yield _sse(event)
                return
            yield _sse(event)
    finally:
        handle.cancel()


def _sse(payload: dict[str, Any]) -> str:
    return f"data:{json.dumps(payload)}\n\n"
