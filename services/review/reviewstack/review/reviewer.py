"""From a paper to a structured review: the same text cleaning and prompt as data-prep, the backend's
text parsed into aspects, and the lineage that makes the review traceable."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.errors import FailedPrecondition, InvalidArgument
from reviewstack.common.papers import clean_paper, decode_paper, pdf_supported
from reviewstack.common.prompt import MAX_RESPONSE_LENGTH, PROMPT_VERSION, Prompt, PromptBuilder
from reviewstack.common.review_format import is_empty, parse, render, run_on_marker
from reviewstack.common.store import ArtifactStore
from reviewstack.common.tokenizer import LoadedTokenizer
from reviewstack.review.backend import Backend, Decoding
from reviewstack.v1 import common_pb2, review_pb2

MAX_REPETITION_PENALTY = 3.0  # beyond it a model cannot repeat even the aspect headings it must write
PAPER_SUFFIXES = (".md", ".markdown", ".txt", ".pdf")
_SCHEMAS = {common_pb2.ASPECT_SCHEMA_FOUR: AspectSchema.FOUR}


@dataclass(frozen=True)
class ReviewLimits:
    max_prompt_length: int = 11_138
    max_new_tokens: int = MAX_RESPONSE_LENGTH
    refusal_penalty: float = 0.0  # λ when a request names none
    refusal_penalty_max: float = 10.0
    backend_refusal_penalty: float = 0.0  # the λ a TGI deployment applies to every request
    repetition_penalty: float = 1.0  # when a request names none; 1 = off
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
        self._builders = {
            schema: PromptBuilder(tokenizer, schema, limits.max_prompt_length) for schema in AspectSchema
        }

    # -- the request ---------------------------------------------------------------------------------
    async def prepare(self, request: review_pb2.ReviewRequest) -> Prepared:
        schema = _SCHEMAS.get(request.schema, AspectSchema.SEVEN)
        cleaned = clean_paper(self._paper_text(request.paper))
        if not cleaned.text.strip():
            raise InvalidArgument("the paper has no text left after cleaning (only front matter?)")
        prompt = self._builders[schema].build(cleaned.text)
        warnings = []
        if prompt.truncated:
            warnings.append(
                f"paper truncated to {prompt.paper_tokens_kept} of its {prompt.paper_tokens} tokens "
                f"(max_prompt_length {self.limits.max_prompt_length})"
            )
        return Prepared(prompt, schema, await self._decoding(request.parameters, schema), warnings)

    def _paper_text(self, paper: common_pb2.Paper) -> str:
        kind = paper.WhichOneof("content")
        if kind == "text":
            if not paper.text.strip():
                raise InvalidArgument("paper.text is empty")
            return paper.text
        if kind == "file":
            return self._decode(paper.file.filename, paper.file.content)
        if kind == "artifact":
            return self._decode(paper.artifact.uri, self._artifact_bytes(paper.artifact))
        raise InvalidArgument("the paper has no content: set paper.text, paper.file or paper.artifact")

    @staticmethod
    def _decode(name: str, data: bytes) -> str:
        suffix = PurePosixPath(name).suffix.lower()
        if suffix not in PAPER_SUFFIXES:
            raise InvalidArgument(f"{name!r}: papers must be {', '.join(PAPER_SUFFIXES)} files")
        if suffix == ".pdf" and not pdf_supported():
            raise FailedPrecondition("PDF papers need the pypdf package on the review service; send text")
        return decode_paper(name, data)

    def _artifact_bytes(self, ref: common_pb2.ArtifactRef) -> bytes:
        if self.store is None:
            raise FailedPrecondition(
                "this review service has no artifact store configured (REVIEWSTACK_STORE)"
            )
        root = self.store.uri_for("x")[:-1]
        if not ref.uri.startswith(root):
            raise InvalidArgument(f"artifact {ref.uri} is outside this service's store {root}")
        data = self.store.get_bytes(ref.uri[len(root) :])
        if ref.sha256 and hashlib.sha256(data).hexdigest() != ref.sha256:
            raise FailedPrecondition(
                f"artifact {ref.uri} changed: its sha256 no longer matches the reference"
            )
        return data

    async def _decoding(self, parameters: review_pb2.GenerationParameters, schema: AspectSchema) -> Decoding:
        limits = self.limits
        asked = parameters.refusal_penalty if parameters.HasField("refusal_penalty") else None
        penalty = limits.refusal_penalty if asked is None else asked
        if not 0 <= penalty <= limits.refusal_penalty_max:
            raise InvalidArgument(
                f"refusal_penalty must be within [0, {limits.refusal_penalty_max}], got {penalty}"
            )
        if not (await self.backend.info()).per_request_penalty:
            if asked is not None and asked != limits.backend_refusal_penalty:
                raise FailedPrecondition(
                    f"the generation backend applies one refusal penalty to every request "
                    f"(λ={limits.backend_refusal_penalty}, a TGI deployment); leave refusal_penalty unset"
                )
            penalty = limits.backend_refusal_penalty
        max_new = parameters.max_new_tokens or limits.max_new_tokens
        if not 0 < max_new <= limits.max_new_tokens:
            raise InvalidArgument(
                f"max_new_tokens must be within [1, {limits.max_new_tokens}], got {max_new}"
            )
        if parameters.temperature < 0 or not 0 <= parameters.top_p <= 1:
            raise InvalidArgument("temperature must be >= 0 and top_p within [0, 1]")
        seed = parameters.seed if parameters.HasField("seed") else None
        repetition = (
            parameters.repetition_penalty
            if parameters.HasField("repetition_penalty")
            else limits.repetition_penalty
        )
        if not 0 < repetition <= MAX_REPETITION_PENALTY:
            raise InvalidArgument(
                f"repetition_penalty must be within (0, {MAX_REPETITION_PENALTY}] (1 = off), got {repetition}"
            )
        stop = (run_on_marker(schema),)
        return Decoding(max_new, parameters.temperature, parameters.top_p, seed, penalty, repetition, stop)

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
            model=self.limits.served_model or (await self.backend.info()).model,
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
