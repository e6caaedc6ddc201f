"""From a paper to a structured review: the same text cleaning and prompt as data-prep, the backend's
text parsed into aspects, and the lineage that makes the review traceable.

Order of work, cheapest refusal first: the decoding parameters are checked against TGI's rules
(`reviewstack.common.generation_params`, the engine's own) before anything is read, so a bad value is
INVALID_ARGUMENT naming the field and never reaches a backend. Then the paper: its size is bounded before
it is decoded (an artifact is read through a bounded stream, never whole), and everything that blocks —
store reads, PDF extraction, cleaning, tokenizing, building the prompt, parsing the answer — runs in a
worker thread, so the service's event loop (health checks, other calls) never waits for one paper.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.errors import FailedPrecondition, InvalidArgument
from reviewstack.common.generation_params import (
    GenerationParams,
    ParameterError,
    check_seed,
    finite,
)
from reviewstack.common.papers import PAPER_SUFFIXES, decode_paper, pdf_supported
from reviewstack.common.prompt import (
    MAX_RESPONSE_LENGTH,
    PROMPT_VERSION,
    Prompt,
    PromptBuilder,
    review_prompt,
)
from reviewstack.common.review_format import is_empty, parse, render, run_on_marker
from reviewstack.common.store import ArtifactStore
from reviewstack.common.store.scope import StoreScope
from reviewstack.common.tokenizer import LoadedTokenizer
from reviewstack.review.backend import Backend, Decoding
from reviewstack.v1 import common_pb2, review_pb2

MAX_REPETITION_PENALTY = 3.0  # beyond it a model cannot repeat even the aspect headings it must write
MAX_PAPER_BYTES = 32 * 2**20  # a PDF with figures; Markdown papers are a few hundred KB
MAX_PAPER_CHARS = 2_000_000  # ~500k tokens, 45x the prompt: tokenizing it takes ~2 s and ~1 GB at most
_READ_CHUNK = 1 << 20
_SCHEMAS = {common_pb2.ASPECT_SCHEMA_FOUR: AspectSchema.FOUR}


@dataclass(frozen=True)
class ReviewLimits:
    max_prompt_length: int = 11_138
    max_new_tokens: int = MAX_RESPONSE_LENGTH
    refusal_penalty: float = 0.0  # λ when a request names none
    refusal_penalty_max: float = 10.0
    backend_refusal_penalty: float = 0.0  # the λ a TGI deployment applies to every request
    repetition_penalty: float = 1.0  # when a request names none; 1 = off
    max_paper_bytes: int = MAX_PAPER_BYTES  # a paper file or artifact, before decoding
    max_paper_chars: int = MAX_PAPER_CHARS  # a paper's text, before cleaning and tokenizing
    # the lineage's model: a backend reports the directory it loaded (TGI: /models/…), which does not
    # say which training run wrote the review
    served_model: str | None = None


@dataclass
class Prepared:
    prompt: Prompt
    schema: AspectSchema
    decoding: Decoding
    warnings: list[str] = field(default_factory=list)


class Reviewer:
    def __init__(
        self,
        tokenizer: LoadedTokenizer,
        backend: Backend,
        limits: ReviewLimits,
        store: ArtifactStore | None = None,
    ) -> None:
        self.backend = backend
        self.limits = limits
        self.store = store
        self.scope = StoreScope(store) if store is not None else None
        self._builders = {
            schema: PromptBuilder(tokenizer, schema, limits.max_prompt_length) for schema in AspectSchema
        }

    # -- the request ---------------------------------------------------------------------------------
    async def prepare(self, request: review_pb2.ReviewRequest) -> Prepared:
        schema = _SCHEMAS.get(request.schema, AspectSchema.SEVEN)
        check_parameters(request.parameters, self.limits)  # before any read, parse or backend call
        prompt, warnings = await asyncio.to_thread(self._prompt, request.paper, schema)
        return Prepared(prompt, schema, await self._decoding(request.parameters, schema), warnings)

    def _prompt(self, paper: common_pb2.Paper, schema: AspectSchema) -> tuple[Prompt, list[str]]:
        """The paper's prompt and what was cut from it: blocking work, run in a worker thread."""
        return review_prompt(self._builders[schema], self._paper_text(paper))

    def _paper_text(self, paper: common_pb2.Paper) -> str:
        kind = paper.WhichOneof("content")
        if kind == "text":
            if not paper.text.strip():
                raise InvalidArgument("paper.text is empty")
            return self._bounded_text("paper.text", paper.text)
        if kind == "file":
            self._check_bytes("paper.file", paper.file.filename, len(paper.file.content))
            return self._decode("paper.file", paper.file.filename, paper.file.content)
        if kind == "artifact":
            return self._decode("paper.artifact", paper.artifact.uri, self._artifact_bytes(paper.artifact))
        raise InvalidArgument("the paper has no content: set paper.text, paper.file or paper.artifact")

    def _decode(self, what: str, name: str, data: bytes) -> str:
        suffix = PurePosixPath(name).suffix.lower()
        if suffix not in PAPER_SUFFIXES:
            raise InvalidArgument(f"{name!r}: papers must be {', '.join(PAPER_SUFFIXES)} files")
        if suffix == ".pdf" and not pdf_supported():
            raise FailedPrecondition("PDF papers need the pypdf package on the review service; send text")
        return self._bounded_text(f"{what} {name!r}", decode_paper(name, data))

    def _bounded_text(self, what: str, text: str) -> str:
        limit = self.limits.max_paper_chars
        if len(text) > limit:
            raise InvalidArgument(
                f"{what} has {len(text):,} characters of text, more than this service reads "
                f"({limit:,}, REVIEWSTACK_MAX_PAPER_CHARS; a paper is cut to "
                f"{self.limits.max_prompt_length:,} tokens anyway): send the paper without its appendices"
            )
        return text

    def _check_bytes(self, what: str, name: str, size: int, *, at_least: bool = False) -> None:
        limit = self.limits.max_paper_bytes
        if size > limit:
            told = "larger than" if at_least else f"{size:,} bytes, more than"
            raise InvalidArgument(
                f"{what} {name!r} is {told} this service reads ({limit:,} bytes, "
                "REVIEWSTACK_MAX_PAPER_BYTES): send a smaller file, e.g. the paper's text"
            )

    def _artifact_bytes(self, ref: common_pb2.ArtifactRef) -> bytes:
        """The artifact's bytes, read through a bounded stream: an object over the limit is refused after
        max_paper_bytes + 1 bytes, whatever its size (stat would hash an object the store has no hash
        for, reading all of it)."""
        if self.store is None or self.scope is None:
            raise FailedPrecondition(
                "this review service has no artifact store configured (REVIEWSTACK_STORE)"
            )
        key = self.scope.key(ref.uri, what="paper.artifact")  # PermissionDenied outside the store
        limit = self.limits.max_paper_bytes
        data = bytearray()
        with self.store.open(key) as stream:
            while chunk := stream.read(min(_READ_CHUNK, limit + 1 - len(data))):
                data += chunk
                self._check_bytes("paper.artifact", ref.uri, len(data), at_least=True)
        if ref.sha256 and hashlib.sha256(data).hexdigest() != ref.sha256:
            raise FailedPrecondition(
                f"artifact {ref.uri} changed: its sha256 no longer matches the reference"
            )
        return bytes(data)

    async def _decoding(self, parameters: review_pb2.GenerationParameters, schema: AspectSchema) -> Decoding:
        info = await self.backend.info()
        return decoding_for(parameters, self.limits, schema, per_request_penalty=info.per_request_penalty)

    # -- the review ----------------------------------------------------------------------------------
    async def review(self, request: review_pb2.ReviewRequest) -> review_pb2.ReviewResponse:
        prepared = await self.prepare(request)
        generated = await self.backend.generate(prepared.prompt.text, prepared.decoding)
        return await self._response(prepared, generated.text, generated.tokens)

    async def stream(self, request: review_pb2.ReviewRequest) -> AsyncIterator[review_pb2.ReviewChunk]:
        prepared = await self.prepare(request)
        async for text, done in self.backend.stream(prepared.prompt.text, prepared.decoding):
            if done is None:
                if text:
                    yield review_pb2.ReviewChunk(text=text)
                continue
            final = await self._response(prepared, done.text, done.tokens)
            yield review_pb2.ReviewChunk(text=text, final=final)

    async def _response(self, prepared: Prepared, text: str, tokens: int) -> review_pb2.ReviewResponse:
        model = self.limits.served_model or (await self.backend.info()).model
        return await asyncio.to_thread(self._build_response, prepared, text, tokens, model)

    def _build_response(
        self, prepared: Prepared, text: str, tokens: int, model: str
    ) -> review_pb2.ReviewResponse:
        """Parse and render the review: blocking work, run in a worker thread."""
        body = text
        for stop in prepared.decoding.stop:  # the stop sequence is the next review's start, not this one's
            body = body.removesuffix(stop)
        parsed = parse(body, prepared.schema, strict=False)
        aspects = [
            common_pb2.Aspect(
                name=aspect.criterion,
                items=parsed.aspects[aspect.key],
                empty=is_empty(parsed.aspects[aspect.key]),
                missing=aspect.key in parsed.missing,
            )
            for aspect in prepared.schema.aspects
        ]
        warnings = prepared.warnings + [f"review format: {w}" for w in parsed.warnings]
        if tokens >= prepared.decoding.max_new_tokens:
            warnings.append(
                f"the review reached max_new_tokens ({prepared.decoding.max_new_tokens}) and was cut: "
                "raise max_new_tokens for a complete review"
            )
        review = common_pb2.StructuredReview(
            schema=common_pb2.ASPECT_SCHEMA_FOUR
            if prepared.schema is AspectSchema.FOUR
            else common_pb2.ASPECT_SCHEMA_SEVEN,
            aspects=aspects,
            text=render(parsed.aspects, prepared.schema),
        )
        decoding = prepared.decoding
        parameters = review_pb2.GenerationParameters(
            max_new_tokens=decoding.max_new_tokens,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            refusal_penalty=decoding.refusal_penalty,
            repetition_penalty=decoding.repetition_penalty,
        )
        if decoding.seed is not None:
            parameters.seed = decoding.seed
        lineage = review_pb2.ReviewLineage(
            model=model,
            prompt_version=PROMPT_VERSION,
            parameters=parameters,
            backend=self.backend.url,
        )
        return review_pb2.ReviewResponse(
            review=review,
            lineage=lineage,
            warnings=warnings,
            prompt_tokens=prepared.prompt.tokens,
            generated_tokens=tokens,
            raw_text=text,
        )


# -- the parameters --------------------------------------------------------------------------------------
def check_parameters(parameters: review_pb2.GenerationParameters, limits: ReviewLimits) -> None:
    """Every GenerationParameters field finite and within this service's bounds, in the service's own
    meaning (temperature 0 = greedy, top_p 0 = off, max_new_tokens 0 = the default); the values then sent
    are checked against TGI's rules in `_check_sent`."""
    _field("temperature", parameters.temperature, _number("must be >= 0 (0 = greedy)", lambda t: t >= 0))
    _field("top_p", parameters.top_p, _number("must be within [0, 1] (0 or 1 = off)", lambda p: 0 <= p <= 1))
    if parameters.HasField("refusal_penalty"):
        high = limits.refusal_penalty_max
        rule = _number(f"must be within [0, {high}]", lambda x: 0 <= x <= high)
        _field("refusal_penalty", parameters.refusal_penalty, rule)
    if parameters.HasField("repetition_penalty"):
        high = MAX_REPETITION_PENALTY
        rule = _number(f"must be within (0, {high}] (1 = off)", lambda x: 0 < x <= high)
        _field("repetition_penalty", parameters.repetition_penalty, rule)
    if parameters.max_new_tokens and not 0 < parameters.max_new_tokens <= limits.max_new_tokens:
        raise InvalidArgument(
            f"parameters.max_new_tokens must be within [1, {limits.max_new_tokens}] (0 = the default), "
            f"got {parameters.max_new_tokens}"
        )
    if parameters.HasField("seed"):
        _field("seed", parameters.seed, check_seed)


def decoding_for(
    parameters: review_pb2.GenerationParameters,
    limits: ReviewLimits,
    schema: AspectSchema,
    *,
    per_request_penalty: bool,
) -> Decoding:
    """What the backend is asked for: the request's parameters (checked by `check_parameters`) with this
    service's defaults, λ as the backend can apply it, and the stop sequence of the schema."""
    asked = parameters.refusal_penalty if parameters.HasField("refusal_penalty") else None
    penalty = limits.refusal_penalty if asked is None else asked
    if not per_request_penalty:
        if asked is not None and asked != limits.backend_refusal_penalty:
            raise FailedPrecondition(
                f"the generation backend applies one refusal penalty to every request "
                f"(λ={limits.backend_refusal_penalty}, a TGI deployment); leave refusal_penalty unset"
            )
        penalty = limits.backend_refusal_penalty
    seed = parameters.seed if parameters.HasField("seed") else None
    repetition = (
        parameters.repetition_penalty
        if parameters.HasField("repetition_penalty")
        else limits.repetition_penalty
    )
    stop = (run_on_marker(schema),)
    max_new = parameters.max_new_tokens or limits.max_new_tokens
    decoding = Decoding(max_new, parameters.temperature, parameters.top_p, seed, penalty, repetition, stop)
    _check_sent(decoding)
    return decoding


def _field(name: str, value: object, check: Callable[[object], object]) -> None:
    try:
        check(value)
    except ParameterError as exc:
        raise InvalidArgument(f"parameters.{name} {exc.rule}, got {value!r}") from None


def _number(rule: str, holds: Callable[[float], bool]) -> Callable[[object], object]:
    """A check for a finite number for which `holds` is true; `rule` says what it must be."""

    def check(value: object) -> float:
        number = finite("value", value)
        if not holds(number):
            raise ParameterError("value", rule, value)
        return number

    return check


def _check_sent(decoding: Decoding) -> None:
    """What the backend will be sent (`Backend.options`) passes TGI's rules, so the backend never has
    to refuse it: the rule is named with the request's field."""
    options = Backend.options(decoding)
    try:
        GenerationParams(
            temperature=options["temperature"],
            top_p=options["top_p"],
            repetition_penalty=options["repetition_penalty"],
            seed=options["seed"],
            max_new_tokens=options["max_new_tokens"],
            stop=tuple(options["stop_sequences"] or ()),
        ).check()
    except ParameterError as exc:
        raise InvalidArgument(f"parameters.{exc.field} {exc.rule}, got {exc.value!r}") from None
