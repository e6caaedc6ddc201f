"""The LLM distiller: an OpenAI-compatible chat endpoint summarises a paper's reviews into the aspects.

This is how the method's authors built their targets (with GPT-4). Any OpenAI-compatible server works:
OpenAI itself, vLLM, or TGI's Messages API (`http://tgi:8080/v1`). The reply must be in the review format
(`reviewstack.common.review_format`); a reply that cannot be parsed is retried, then reported as that
paper's error — never silently replaced.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from reviewstack.common.aspects import EMPTY_ASPECT, AspectSchema
from reviewstack.common.errors import InvalidArgument
from reviewstack.common.review_format import is_empty, parse
from reviewstack.dataprep.distill import Distillation, ProgressFn
from reviewstack.dataprep.reviews import HumanPoint, PaperReviews

PROMPT_VERSION = "distill-v1"
API_KEY_ENV = "REVIEWSTACK_LLM_API_KEY"


def distill_instruction(schema: AspectSchema) -> str:
    criteria = "\n".join(f"{i}. {a.criterion}" for i, a in enumerate(schema.aspects, start=1))
    return (
        "You are an experienced area chair of a machine learning conference. You will be given the "
        "reviews that human reviewers wrote about one paper. Distil them into a single review organised "
        f"by these {len(schema.aspects)} criteria:\n{criteria}\n\n"
        "Use only what the reviewers wrote; merge points that several reviewers make into one; keep each "
        "point to one or two sentences. Write in exactly this format: for each criterion, in this order, "
        'a line with its number and name, then its points, one per line, each starting with "- ". If the '
        f'reviews say nothing about a criterion, write "- {EMPTY_ASPECT}" as its only point. Write '
        "nothing else."
    )


def reviews_message(paper: PaperReviews) -> str:
    parts = [f"Paper title: {paper.title}"] if paper.title else []
    for review in paper.reviews:
        body = "\n\n".join(
            f"{name.replace('_', ' ').upper()}:\n{text}" for name, text in review.sections.items()
        )
        parts.append(f"### Reviewer {review.reviewer_id}\n{body}")
    return "\n\n".join(parts)


class LLMDistiller:
    """Calls `model` at `endpoint` once per paper, `concurrency` papers at a time, temperature 0."""

    def __init__(
        self,
        endpoint: str,
        model: str,
        schema: AspectSchema = AspectSchema.SEVEN,
        api_key: str | None = None,
        concurrency: int = 4,
        max_tokens: int = 1500,
        timeout_s: float = 180.0,
        attempts: int = 2,
    ) -> None:
        if not endpoint or not model:
            raise InvalidArgument(
                "the LLM distiller needs an endpoint (--llm-endpoint URL) and a model (--llm-model NAME)"
            )
        from openai import OpenAI

        self.endpoint, self.model, self.schema = endpoint, model, schema
        self.concurrency, self.max_tokens, self.attempts = concurrency, max_tokens, attempts
        self._client = OpenAI(
            base_url=endpoint,
            api_key=api_key or os.environ.get(API_KEY_ENV) or "none",
            timeout=timeout_s,
            max_retries=3,
        )

    def describe(self) -> dict[str, object]:
        return {
            "name": "llm",
            "version": PROMPT_VERSION,
            "endpoint": self.endpoint,
            "model": self.model,
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        }

    def distill(
        self,
        papers: Sequence[PaperReviews],
        points: dict[str, list[HumanPoint]],
        progress: ProgressFn | None = None,
    ) -> dict[str, Distillation]:
        results: dict[str, Distillation] = {}
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            for done, outcome in enumerate(pool.map(self._one, papers), start=1):
                results[outcome.paper_id] = outcome
                if progress:
                    progress(done, len(papers))
        return results

    def _one(self, paper: PaperReviews) -> Distillation:
        messages = [
            {"role": "system", "content": distill_instruction(self.schema)},
            {"role": "user", "content": reviews_message(paper)},
        ]
        problem = ""
        for _ in range(self.attempts):
            try:
                reply = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=0.0, max_tokens=self.max_tokens
                )
            except Exception as exc:  # the client raises one class per HTTP failure; all end the same way
                return Distillation(paper.paper_id, error=f"LLM endpoint {self.endpoint} failed: {exc}")
            text = (reply.choices[0].message.content or "") if reply.choices else ""
            try:
                parsed = parse(text, self.schema, strict=False)
            except InvalidArgument as exc:
                problem = str(exc)
                continue
            if all(is_empty(items) for items in parsed.aspects.values()):
                problem = "the reply held no recognisable aspect"
                continue
            aspects = {k: [] if is_empty(v) else v for k, v in parsed.aspects.items()}
            return Distillation(paper.paper_id, aspects)
        return Distillation(
            paper.paper_id, error=f"LLM reply unusable after {self.attempts} attempts: {problem}"
        )
