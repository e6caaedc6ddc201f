"""TGI's HTTP request shapes and its validation rules, so that TGI clients meet the same answers here.

The messages of the validation errors follow TGI's router (422, `error_type: validation`); the rules for
each parameter live in `reviewstack.common.generation_params`, shared with the Review service. Bodies are
read strictly, as TGI's own parser does: a string where a number belongs, or a number where a boolean
belongs, is a malformed request, not a value to coerce. Parameters that TGI accepts but this engine does
not implement (best_of > 1, watermark, grammar, typical_p, frequency_penalty, adapters) are refused with a
422 that says so, never silently ignored.

Validation comes in two steps: `check_parameters` needs nothing but the body and runs before the prompt is
tokenized (a request that cannot succeed costs no tokenizer time), `validate` checks the token counts.

The Messages API (`/v1/chat/completions`) is TGI's too: a chat request becomes generate parameters
(`chat_parameters`) over the chat-templated prompt, so both routes share one validation and one set of
messages. As in TGI, temperature 0 means greedy decoding and no temperature means sampling at 1.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from reviewstack.common.generation_params import GenerationParams, ParameterError, check_truncate
from reviewstack.generation.engine import Request
from reviewstack.generation.sampling import SamplingSettings

REFUSAL_PENALTY_HEADER = "X-Refusal-Penalty"
_STRICT = ConfigDict(extra="ignore", strict=True)


class Parameters(BaseModel):
    model_config = _STRICT

    best_of: int | None = None
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = None
    grammar: Any = None
    max_new_tokens: int | None = None
    repetition_penalty: float | None = None
    return_full_text: bool | None = None
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    temperature: float | None = None
    top_k: int | None = None
    top_n_tokens: int | None = None
    top_p: float | None = None
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool = False
    adapter_id: str | None = None


class GenerateRequest(BaseModel):
    model_config = _STRICT

    inputs: str
    parameters: Parameters = Field(default_factory=Parameters)
    stream: bool = False


class ValidationFailed(ValueError):
    """A request TGI would answer with 422."""


def check_parameters(p: Parameters, *, max_input_tokens: int, max_total_tokens: int) -> None:
    """Every rule that needs no tokens: TGI's per-parameter rules, what this engine does not implement,
    and the limits a request breaks whatever its prompt (`truncate`, `max_new_tokens` alone)."""
    try:
        GenerationParams(
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k,
            typical_p=p.typical_p,
            repetition_penalty=p.repetition_penalty,
            frequency_penalty=p.frequency_penalty,
            seed=p.seed,
            max_new_tokens=p.max_new_tokens,
            top_n_tokens=p.top_n_tokens,
            best_of=p.best_of,
            stop=tuple(p.stop),
        ).check()
        if p.truncate is not None:
            check_truncate(p.truncate, max_input_tokens)
    except ParameterError as exc:
        raise ValidationFailed(str(exc)) from None
    _refuse_unsupported(p)
    if p.max_new_tokens is not None and p.max_new_tokens >= max_total_tokens:
        raise ValidationFailed(
            f"`inputs` tokens + `max_new_tokens` must be <= {max_total_tokens}. "
            f"Given: at least 1 `inputs` token and {p.max_new_tokens} `max_new_tokens`"
        )


def check_inputs(body: GenerateRequest) -> None:
    if not body.inputs:
        raise ValidationFailed("`inputs` cannot be empty")


def validate(
    body: GenerateRequest,
    input_ids: list[int],
    *,
    max_input_tokens: int,
    max_total_tokens: int,
    refusal_penalty: float,
) -> Request:
    """The engine request for a TGI body whose inputs tokenized to `input_ids` (truncated here when
    the body asks for it); raises ValidationFailed with TGI's message otherwise."""
    p = body.parameters
    check_inputs(body)
    check_parameters(p, max_input_tokens=max_input_tokens, max_total_tokens=max_total_tokens)
    if p.truncate is not None:
        input_ids = input_ids[-p.truncate :]
    length = len(input_ids)
    if length == 0:
        raise ValidationFailed("`inputs` cannot be empty: it tokenized to no token")
    if length > max_input_tokens:
        raise ValidationFailed(f"`inputs` must have less than {max_input_tokens} tokens. Given: {length}")
    max_new = p.max_new_tokens if p.max_new_tokens is not None else max_total_tokens - length
    if length + max_new > max_total_tokens:
        raise ValidationFailed(
            f"`inputs` tokens + `max_new_tokens` must be <= {max_total_tokens}. "
            f"Given: {length} `inputs` tokens and {max_new} `max_new_tokens`"
        )
    sampling = SamplingSettings(
        do_sample=p.do_sample,
        temperature=p.temperature if p.temperature is not None else 1.0,
        top_k=p.top_k or 0,
        top_p=p.top_p if p.top_p is not None else 1.0,
        repetition_penalty=p.repetition_penalty if p.repetition_penalty is not None else 1.0,
        refusal_penalty=refusal_penalty,
        top_n_tokens=p.top_n_tokens or 0,
        seed=p.seed,
    )
    return Request(input_ids, max_new, sampling, list(p.stop), p.decoder_input_details)


def _refuse_unsupported(p: Parameters) -> None:
    """Called once the values are known to be valid TGI values: any typical_p TGI accepts is < 1."""
    unsupported = {
        "best_of": p.best_of is not None and p.best_of > 1,
        "watermark": p.watermark,
        "grammar": p.grammar is not None,
        "typical_p": p.typical_p is not None,
        "frequency_penalty": bool(p.frequency_penalty),
        "adapter_id": bool(p.adapter_id),
    }
    _refuse_named(unsupported)


def refusal_penalty_from(header: str | None, default: float, maximum: float) -> float:
    """λ for one request: the X-Refusal-Penalty header within [0, maximum], else the default."""
    if header is None or header.strip() == "":
        return default
    try:
        value = float(header)
    except ValueError:
        raise ValidationFailed(f"`{REFUSAL_PENALTY_HEADER}` must be a number. Given: {header!r}") from None
    if not 0 <= value <= maximum:  # NaN fails this too
        raise ValidationFailed(f"`{REFUSAL_PENALTY_HEADER}` must be >= 0 and <= {maximum}. Given: {value}")
    return value


# -- the Messages API -------------------------------------------------------------------------------------
class ContentPart(BaseModel):
    model_config = _STRICT

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = _STRICT

    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = _STRICT

    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's chat completion request, the fields TGI reads; unknown fields are ignored as TGI does."""

    model_config = _STRICT

    model: str | None = None
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens; wins when both are set
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    response_format: Any = None
    logit_bias: dict[str, float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _stop_as_a_list(cls, data: Any) -> Any:
        """OpenAI accepts `stop` as null, one string or a list of them."""
        if isinstance(data, dict) and "stop" in data and not isinstance(data["stop"], list):
            stop = data["stop"]
            return {**data, "stop": [] if stop is None else [stop] if isinstance(stop, str) else stop}
        return data

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


def chat_messages(body: ChatRequest) -> list[dict[str, str]]:
    """The messages as the chat template takes them: text content only (parts joined)."""
    if not body.messages:
        raise ValidationFailed("`messages` cannot be empty")
    messages = []
    for number, message in enumerate(body.messages):
        content = message.content
        if isinstance(content, list):
            kinds = sorted({part.type for part in content if part.type != "text"})
            if kinds:
                raise ValidationFailed(
                    f"messages[{number}]: this engine reads text only, not {', '.join(kinds)} content parts"
                )
            content = "".join(part.text or "" for part in content)
        messages.append({"role": message.role, "content": content or ""})
    return messages


def chat_parameters(body: ChatRequest) -> Parameters:
    """The generate parameters a chat request stands for; refuses what this engine does not implement.
    Cheap: the route checks them before it renders the chat template."""
    _refuse_unsupported_chat(body)
    greedy = body.temperature == 0
    max_new = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return Parameters(
        do_sample=not greedy,
        temperature=None if greedy else body.temperature,
        # OpenAI clients send top_p=1 to mean "off"; TGI's validation refuses 1.0, so it becomes "off" here
        top_p=None if body.top_p == 1 else body.top_p,
        seed=body.seed,
        stop=body.stop,
        max_new_tokens=max_new,
    )


def _refuse_unsupported_chat(body: ChatRequest) -> None:
    if body.n is not None and body.n < 1:
        raise ValidationFailed(f"`n` must be strictly positive. Given: {body.n}")
    unsupported = {
        "n": body.n is not None and body.n > 1,
        "presence_penalty": bool(body.presence_penalty),
        "frequency_penalty": bool(body.frequency_penalty),
        "logprobs": bool(body.logprobs) or bool(body.top_logprobs),
        "tools": bool(body.tools),
        "response_format": body.response_format is not None
        and not (isinstance(body.response_format, dict) and body.response_format.get("type") == "text"),
        "logit_bias": bool(body.logit_bias),
    }
    _refuse_named(unsupported)


def _refuse_named(unsupported: dict[str, bool]) -> None:
    """A 422 naming every parameter the request set that this engine does not implement: silently
    ignoring one would return text the caller did not ask for."""
    named = [name for name, used in unsupported.items() if used]
    if named:
        raise ValidationFailed(
            f"this engine does not implement {', '.join(f'`{n}`' for n in named)}; leave them unset, "
            "or serve the model with TGI"
        )
