"""The Messages API's answers: TGI's OpenAI-compatible chat completion and chunk shapes over the engine's
events. The request side (validation, the mapping onto a generate request) is in `protocol`.

Finish reasons are OpenAI's words ("stop" for an end-of-sequence token or a stop sequence, "length");
TGI itself says "stop_sequence" for the latter. As in TGI, a stop sequence stays in the text.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse

from reviewstack.generation.engine import EndEvent, ErrorEvent, Finished, Handle
from reviewstack.generation.protocol import ChatRequest, ValidationFailed, chat_messages

_FINISH_REASONS = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


def openai_error(status: int, message: str, kind: str) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=status)


def chat_prompt(tokenizer: Any, body: ChatRequest) -> str:
    """The prompt a chat request stands for: the tokenizer's own chat template, generation prompt added."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValidationFailed(
            "Template error: the served model's tokenizer has no chat template; use /generate with a "
            "prompt, or serve a model whose tokenizer_config.json carries one"
        )
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(chat_messages(body), tokenize=False, add_generation_prompt=True)
    except TemplateError as exc:  # the template's own checks (e.g. roles that must alternate)
        raise ValidationFailed(f"Template error: {exc}") from None


class ChatChunk:
    """The fields every chat completion (or chunk of one) of a request shares."""

    def __init__(self, model: str, fingerprint: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.fingerprint = fingerprint

    def _head(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
        }

    def completion(self, finished: Finished) -> dict[str, Any]:
        message = {"role": "assistant", "content": finished.generated_text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": _reason(finished)}
        return {**self._head("chat.completion"), "choices": [choice], "usage": _usage(finished)}

    def delta(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        delta = {"role": "assistant", "content": text}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("chat.completion.chunk"), "choices": [choice], "usage": None}

    def usage(self, finished: Finished) -> dict[str, Any]:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": _usage(finished)}


def _reason(finished: Finished) -> str:
    return _FINISH_REASONS.get(finished.finish_reason, finished.finish_reason)


def _usage(finished: Finished) -> dict[str, int]:
    prompt, completion = finished.input_length, finished.generated_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def chat_events(chunk: ChatChunk, handle: Handle, include_usage: bool) -> AsyncIterator[str]:
    """One chunk per token; the last one carries the finish reason and whatever of the final text the
    token deltas have not sent (a stop sequence cuts the text inside a token), so the deltas always add
    up to the non-streamed content. Then the usage chunk when asked for, then `[DONE]`."""
    sent = ""
    try:
        while True:
            event = await handle.events.get()
            if isinstance(event, ErrorEvent):  # the OpenAI client raises on an event carrying "error"
                message = {"message": event.message, "type": "generation", "param": None, "code": None}
                yield _sse({"error": message})
                return
            token = event.token
            if not isinstance(event, EndEvent):
                text = "" if token.special else token.text
                sent += text
                yield _sse(chunk.delta(text, None))
                continue
            finished = event.finished
            final = finished.generated_text
            rest = final[len(sent) :] if final.startswith(sent) else ("" if token.special else token.text)
            yield _sse(chunk.delta(rest, _reason(finished)))
            if include_usage:
                yield _sse(chunk.usage(finished))
            yield "data: [DONE]\n\n"
            return
    finally:
        handle.cancel()  # a client that went away frees its slot


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
