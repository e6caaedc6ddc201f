"""Baseline reviews written now by any OpenAI-compatible endpoint (the seed's GPT-4-1106 baseline, or
any model behind TGI or vLLM), with the method's instruction.

The paper goes through the same cleaning and prompt builder as data-prep and the review service, and is
cut with the same tokenizer and limit (the Llama-3 tokenizer, 11,138 tokens, by default): a baseline
then reads exactly the paper text the fine-tuned model reads, whatever its own context length. Each
review is written to `reviews/<system>/<paper-id>.json` in the review service's batch format
(`reviewstack review --batch`), so one loader reads both; like those, `review.raw_text` keeps the
endpoint's answer before parsing, so an external model's drift from the format stays auditable.

A batch resumes: papers already in the store are skipped. A failing paper is reported and the batch goes
on, except on errors that would fail every paper alike (bad key, wrong URL or model).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.errors import FailedPrecondition, InvalidArgument, ReviewStackError
from reviewstack.common.papers import PAPER_SUFFIXES, decode_paper, pdf_supported
from reviewstack.common.prompt import (
    MAX_PROMPT_LENGTH,
    MAX_RESPONSE_LENGTH,
    PROMPT_VERSION,
    Prompt,
    PromptBuilder,
    review_prompt,
)
from reviewstack.common.review_format import parse
from reviewstack.common.review_record import ReviewBody, ReviewRecord
from reviewstack.common.store import ArtifactStore, check_prefix
from reviewstack.common.tokenizer import load_tokenizer
from reviewstack.evaluation.model import Exclusion
from reviewstack.evaluation.openai_endpoint import DEFAULT_API_KEY_ENV, FATAL, Endpoint, run_blocking

STAGE = "reviewing"
Progress = Callable[[str, int, int, str], None]


@dataclass(frozen=True)
class Decoding:
    max_tokens: int = MAX_RESPONSE_LENGTH
    temperature: float = 0.0  # 0 = greedy on TGI and the engine; OpenAI's most deterministic setting
    top_p: float | None = None
    seed: int | None = None

    def request(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.top_p is not None:
            fields["top_p"] = self.top_p
        if self.seed is not None:
            fields["seed"] = self.seed
        return fields

    def lineage(self) -> dict[str, Any]:  # the review service's GenerationParameters field names
        parameters: dict[str, Any] = {
            "max_new_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p or 0.0,  # 0 = off, as in GenerationParameters
        }
        if self.seed is not None:
            parameters["seed"] = self.seed
        return parameters


@dataclass
class ReviewBatch:
    """What a batch did: reviews written now, papers already in the store, papers that failed and why."""

    system: str
    location: str  # the store URI of reviews/<system>/
    papers: int
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[Exclusion] = field(default_factory=list)


def generate_reviews(
    papers_dir: str | Path,
    system: str,
    store: ArtifactStore,
    base_url: str,
    model: str,
    *,
    api_key_env: str = DEFAULT_API_KEY_ENV,
    concurrency: int = 4,
    max_tokens: int = MAX_RESPONSE_LENGTH,
    temperature: float = 0.0,
    top_p: float | None = None,
    seed: int | None = None,
    tokenizer: str | Path | None = None,
    max_prompt_length: int = MAX_PROMPT_LENGTH,
    retries: int = 4,
    timeout_s: float = 600.0,
    progress: Progress | None = None,
) -> ReviewBatch:
    """Review every paper file of `papers_dir` (.md, .markdown, .txt, .pdf; id = file stem) through the
    endpoint into `reviews/<system>/` of `store`, `concurrency` requests at a time.

    `tokenizer` (a directory; default: the Llama-3 tokenizer) and `max_prompt_length` decide where a long
    paper is cut. Raises on bad arguments and on endpoint errors every paper would meet; everything else
    is in the returned summary.
    """
    if concurrency < 1 or max_tokens < 1:
        raise InvalidArgument("concurrency and max_tokens must be at least 1")
    endpoint = Endpoint(base_url, model, api_key_env, retries, timeout_s)
    prefix = check_prefix(f"reviews/{system}")
    papers = _papers(Path(papers_dir))
    builder = PromptBuilder(load_tokenizer(tokenizer), AspectSchema.SEVEN, max_prompt_length)
    batch = ReviewBatch(system, store.uri_for(prefix), len(papers))
    batch.skipped = [p.stem for p in papers if store.exists(f"{prefix}/{p.stem}.json")]
    todo = [p for p in papers if p.stem not in batch.skipped]
    writer = _Writer(endpoint, Decoding(max_tokens, temperature, top_p, seed), builder, system)
    report = progress or (lambda *_: None)
    report(STAGE, len(batch.skipped), len(papers), f"{len(batch.skipped)} already in the store")

    async def run() -> None:
        gate = asyncio.Semaphore(concurrency)
        async with endpoint.client() as client:

            async def one(path: Path) -> None:
                async with gate:
                    try:
                        record = await writer.record(client, path)
                        await asyncio.to_thread(
                            store.put_bytes, f"{prefix}/{path.stem}.json", record.to_json()
                        )
                    except FATAL:
                        raise
                    except ReviewStackError as exc:  # one paper's failure is reported, the batch goes on
                        batch.failed.append(Exclusion(path.name, str(exc)))
                    except OSError as exc:
                        batch.failed.append(Exclusion(path.name, f"cannot read the paper: {exc.strerror}"))
                    else:
                        batch.written.append(path.stem)
                done = len(batch.skipped) + len(batch.written) + len(batch.failed)
                report(STAGE, done, len(papers), path.stem)

            try:
                async with asyncio.TaskGroup() as group:
                    for path in todo:
                        group.create_task(one(path))
            except ExceptionGroup as errors:  # a fatal error cancelled the rest: raise it as itself
                raise errors.exceptions[0] from None

    run_blocking(run())
    batch.written.sort()  # completion order says nothing; file order reads better
    batch.failed.sort(key=lambda f: f.what)
    return batch


def _papers(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InvalidArgument(f"{folder}: not a folder of papers")
    papers = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PAPER_SUFFIXES)
    if not papers:
        raise InvalidArgument(f"{folder} holds no paper files ({', '.join(PAPER_SUFFIXES)})")
    stems = Counter(p.stem for p in papers)
    twice = sorted(stem for stem, count in stems.items() if count > 1)
    if twice:  # one id, one record: two files would overwrite each other's review
        raise InvalidArgument(f"{folder}: several files share the paper id {', '.join(twice)}; keep one each")
    return papers


class _Writer:
    """One paper → its review record."""

    def __init__(self, endpoint: Endpoint, decoding: Decoding, builder: PromptBuilder, system: str) -> None:
        self.endpoint, self.decoding, self.builder, self.system = endpoint, decoding, builder, system

    async def record(self, client: openai.AsyncOpenAI, path: Path) -> ReviewRecord:
        data = await asyncio.to_thread(path.read_bytes)
        prompt, warnings = await asyncio.to_thread(self._prompt, path.name, data)
        try:
            reply = await client.chat.completions.create(
                model=self.endpoint.model, messages=prompt.messages, **self.decoding.request()
            )
        except openai.OpenAIError as exc:
            raise self.endpoint.error(exc) from None
        if not reply.choices or reply.choices[0].message.content is None:
            reason = reply.choices[0].finish_reason if reply.choices else "no choices"
            raise InvalidArgument(f"{self.endpoint.host} returned no text for the paper ({reason})")
        choice = reply.choices[0]
        text = choice.message.content or ""
        if choice.finish_reason == "length":
            warnings.append(f"review cut at max_tokens={self.decoding.max_tokens}")
        parsed = parse(text, AspectSchema.SEVEN, strict=False)
        usage = reply.usage
        return ReviewRecord.of_paper(
            path.name,
            data,
            self.system,
            ReviewBody.from_parsed(parsed, text),
            lineage=self._lineage(reply),
            warnings=warnings + [f"review format: {w}" for w in parsed.warnings],
            prompt_tokens=usage.prompt_tokens if usage else prompt.tokens,
            generated_tokens=usage.completion_tokens if usage else 0,
        )

    def _prompt(self, name: str, data: bytes) -> tuple[Prompt, list[str]]:
        if name.lower().endswith(".pdf") and not pdf_supported():
            raise FailedPrecondition("PDF papers need the pypdf package; install it or give text/Markdown")
        return review_prompt(self.builder, decode_paper(name, data))

    def _lineage(self, reply: Any) -> dict[str, Any]:
        tokenizer = self.builder.tokenizer
        return {
            "model": self.endpoint.model,
            "prompt_version": PROMPT_VERSION,
            "parameters": self.decoding.lineage(),
            "backend": self.endpoint.url,
            "api": "openai-chat-completions",
            "endpoint_host": self.endpoint.host,
            "served_model": reply.model,  # what the endpoint says answered (a dated snapshot of `model`)
            "system_fingerprint": reply.system_fingerprint,
            "prompt_tokenizer": {"name": tokenizer.name, "sha256": tokenizer.sha256},
            "max_prompt_length": self.builder.max_prompt_length,
        }
