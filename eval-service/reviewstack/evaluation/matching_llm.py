"""The LLM-judge matcher: an LLM behind any OpenAI-compatible endpoint reads a paper's generated and human
points, numbered, and names the pairs that raise the same point, each with a 1-10 similarity.

A pair rated at least 7 is a match (the threshold of Liang et al. 2023, "Can large language models
provide useful feedback on research papers?"). Matches are one-to-one within a paper, as the
embedded matcher's are: when the judge pairs one point with several, the highest-rated pairs are kept.

Judges drift from the asked-for JSON, so the answer is read tolerantly: code fences and text around the
JSON are skipped, a truncated or broken answer gives up what whole entries it holds, and entries with
indices out of range or no usable similarity are dropped and counted, never guessed. A paper whose
answer holds nothing readable, or whose call failed, is not "no matches": it is in `failures`, so the
evaluation can exclude it instead of scoring it zero.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import openai

from reviewstack.common.errors import InvalidArgument, ReviewStackError
from reviewstack.evaluation.model import Match
from reviewstack.evaluation.openai_endpoint import DEFAULT_API_KEY_ENV, FATAL, Endpoint, run_blocking

JUDGE_PROMPT_VERSION = "llm-judge-v1"  # bump whenever JUDGE_INSTRUCTION or the list layout changes
MATCH_THRESHOLD = 7

JUDGE_INSTRUCTION = """\
You compare two lists of review comments about the same machine-learning paper: list G, from a \
generated review, and list H, from the human reviewers. Find the pairs of one comment from G and one \
from H that make the same specific point: the same strength, weakness, question or suggestion about the \
same part of the paper. Sharing a topic (both mention the experiments) is not enough.

Rate each pair from 1 to 10: 10 = the same point, said equivalently; 7-9 = the same point, worded \
differently or in more or less detail; 4-6 = related but different points; 1-3 = barely related. \
Report only pairs rated 5 or more.

Answer with JSON only, in this form:
{"matches": [{"G": 1, "H": 3, "similarity": 8, "rationale": "both doubt the choice of baselines"}]}
If no pair qualifies, answer {"matches": []}."""


def judge_messages(generated: Sequence[str], reference: Sequence[str]) -> list[dict[str, str]]:
    def listing(tag: str, points: Sequence[str]) -> str:
        return "\n".join(f"{tag}{number}. {' '.join(p.split())}" for number, p in enumerate(points, start=1))

    user = (
        f"List G (generated review):\n{listing('G', generated)}\n\n"
        f"List H (human reviews):\n{listing('H', reference)}"
    )
    return [{"role": "system", "content": JUDGE_INSTRUCTION}, {"role": "user", "content": user}]


# -- reading the judge's answer -------------------------------------------------------------------------
@dataclass
class Judgement:
    """What one answer yielded: the matches, and what had to be left out of it and why."""

    matches: list[Match] = field(default_factory=list)
    pairs: int = 0  # well-formed pairs read, whatever their similarity
    dropped: int = 0  # entries out of range, without indices or without a 1-10 similarity
    duplicates: int = 0  # a pair listed again (the higher similarity kept)
    conflicts: int = 0  # pairs at or above the threshold left out to keep the matching one-to-one
    problem: str | None = None  # why the answer could not be read as a whole; None when it could

    @property
    def readable(self) -> bool:
        """Whether the answer said anything: JSON that parsed, or at least one entry salvaged."""
        return self.problem is None or self.pairs + self.dropped > 0


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)(?:```|$)", re.DOTALL)
_FLAT_OBJECT = re.compile(r"\{[^{}]*\}")
_NUMBER = re.compile(r"\d+")
_PAIR_KEY = re.compile(r"^\s*[A-Za-z]?\s*(\d+)\s*[-–:,/&]\s*[A-Za-z]?\s*(\d+)\s*$")  # "G1-H3", "A1-B3"
_GENERATED_KEYS = ("G", "g", "generated", "generated_index")
_REFERENCE_KEYS = ("H", "h", "human", "reference", "human_index")
_SCORE_KEYS = ("similarity", "score", "rating")


def parse_judgement(
    text: str, n_generated: int, n_reference: int, threshold: float = MATCH_THRESHOLD
) -> Judgement:
    """Read a judge's answer about `n_generated` G points and `n_reference` H points (numbered from 1)."""
    judgement = Judgement()
    entries, judgement.problem = _entries(text)
    best: dict[tuple[int, int], float] = {}
    for entry in entries:
        pair = _pair(entry, n_generated, n_reference)
        if pair is None:
            judgement.dropped += 1
            continue
        judgement.pairs += 1
        (g, h), score = pair
        if (g, h) in best:
            judgement.duplicates += 1
        best[(g, h)] = max(score, best.get((g, h), score))
    used_g: set[int] = set()
    used_h: set[int] = set()
    for (g, h), score in sorted(best.items(), key=lambda item: (-item[1], item[0])):
        if score < threshold:
            continue
        if g in used_g or h in used_h:
            judgement.conflicts += 1
            continue
        used_g.add(g)
        used_h.add(h)
        judgement.matches.append(Match(generated=g, reference=h, score=score))
    judgement.matches.sort(key=lambda m: (m.generated, m.reference))
    return judgement


def _entries(text: str) -> tuple[list[Any], str | None]:
    """The answer's pair entries, and a problem when it was not one whole JSON answer."""
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    value = _first_json(body)
    if isinstance(value, dict) and isinstance(value.get("matches"), list):
        return value["matches"], None
    if isinstance(value, list):
        return value, None
    if isinstance(value, dict) and value and all(_PAIR_KEY.match(str(k)) for k in value):
        return [_keyed(k, v) for k, v in value.items()], None  # {"G1-H3": {"similarity": 8}, ...}
    salvaged = []
    for candidate in _FLAT_OBJECT.findall(body):
        try:
            salvaged.append(json.loads(candidate))
        except ValueError:
            continue
    salvaged = [s for s in salvaged if isinstance(s, dict) and any(k in s for k in _SCORE_KEYS)]
    return salvaged, f"no JSON answer of the asked-for form; {len(salvaged)} entries salvaged from the text"


def _first_json(text: str) -> Any:
    """The first JSON object or array in `text`, ignoring what comes before and after it."""
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char in "{[":
            try:
                value, _ = decoder.raw_decode(text, start)
            except ValueError:
                continue
            if isinstance(value, dict | list):
                return value
    return None


def _keyed(key: str, value: Any) -> dict[str, Any]:
    match = _PAIR_KEY.match(str(key))
    assert match is not None
    entry = dict(value) if isinstance(value, dict) else {"similarity": value}
    return {**entry, "G": int(match.group(1)), "H": int(match.group(2))}


def _pair(entry: Any, n_generated: int, n_reference: int) -> tuple[tuple[int, int], float] | None:
    """((g, h) 0-based, similarity) of a well-formed entry; None for one to drop."""
    if not isinstance(entry, dict):
        return None
    g = _index(next((entry[k] for k in _GENERATED_KEYS if k in entry), None), n_generated)
    h = _index(next((entry[k] for k in _REFERENCE_KEYS if k in entry), None), n_reference)
    score = _score(next((entry[k] for k in _SCORE_KEYS if k in entry), None))
    if g is None or h is None or score is None:
        return None
    return (g, h), score


def _index(value: Any, count: int) -> int | None:
    """A 1-based index as the judge writes it (3, "3", "G3") → 0-based, or None when out of range."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        found = _NUMBER.search(value)
        value = int(found.group()) if found else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or not 1 <= value <= count:
        return None
    return value - 1


def _score(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip().split("/")[0])  # "8", "8/10"
        except ValueError:
            return None
    if not isinstance(value, int | float) or not 1 <= value <= 10:
        return None
    return float(value)


# -- the matcher ----------------------------------------------------------------------------------------
class LLMMatcher:
    """The Matcher protocol over an OpenAI-compatible endpoint; papers are judged `concurrency` at a time.

    After `match_many`, `judgements[i]` holds what was read for pair i (None where its call failed) and
    `failures` maps each pair the evaluation should exclude to the reason.
    """

    name = "llm"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        api_key: Callable[[], str | None] | None = None,
        concurrency: int = 4,
        threshold: float = MATCH_THRESHOLD,
        max_tokens: int = 2048,
        temperature: float = 0.0,
        seed: int | None = 0,
        retries: int = 4,
        timeout_s: float = 600.0,
    ) -> None:
        if concurrency < 1 or max_tokens < 1 or not 1 <= threshold <= 10:
            raise InvalidArgument("concurrency and max_tokens must be >= 1 and the threshold within 1-10")
        self.endpoint = Endpoint(base_url, model, api_key_env, retries, timeout_s, api_key=api_key)
        self.concurrency, self.threshold = concurrency, threshold
        self.max_tokens, self.temperature, self.seed = max_tokens, temperature, seed
        # the threshold changes decisions as much as the prompt does: a non-default one is in the version
        self.version = JUDGE_PROMPT_VERSION + ("" if threshold == MATCH_THRESHOLD else f"+t{threshold:g}")
        self.judgements: list[Judgement | None] = []
        self.failures: dict[int, str] = {}

    def describe(self) -> dict[str, Any]:
        """What a report records about the judge, besides name and version. Its agreement with GPT-4 is
        not measured here: bench/matcher_agreement.py can score a judge only where one is reachable."""
        return {
            "agreement": None,
            "model": self.endpoint.model,
            "backend": self.endpoint.url,
            "threshold": self.threshold,
            "temperature": self.temperature,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
        }

    def match_many(self, pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[list[Match]]:
        self.judgements = [None] * len(pairs)
        self.failures = {}
        run_blocking(self._judge_all(pairs))
        return [j.matches if j is not None else [] for j in self.judgements]

    async def _judge_all(self, pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> None:
        gate = asyncio.Semaphore(self.concurrency)
        async with self.endpoint.client() as client:

            async def one(index: int, generated: Sequence[str], reference: Sequence[str]) -> None:
                if not generated or not reference:  # nothing to compare: no call, no matches
                    self.judgements[index] = Judgement()
                    return
                async with gate:
                    try:
                        answer = await self._ask(client, generated, reference)
                    except FATAL:
                        raise
                    except ReviewStackError as exc:
                        self.failures[index] = str(exc)
                        return
                judgement = parse_judgement(answer, len(generated), len(reference), self.threshold)
                self.judgements[index] = judgement
                if not judgement.readable:
                    self.failures[index] = f"the judge's answer was unreadable: {judgement.problem}"

            try:
                async with asyncio.TaskGroup() as group:
                    for index, (generated, reference) in enumerate(pairs):
                        group.create_task(one(index, list(generated), list(reference)))
            except ExceptionGroup as errors:  # bad key, URL or model: every paper would fail alike
                raise errors.exceptions[0] from None

    async def _ask(
        self, client: openai.AsyncOpenAI, generated: Sequence[str], reference: Sequence[str]
    ) -> str:
        options: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.seed is not None:
            options["seed"] = self.seed
        try:
            reply = await client.chat.completions.create(
                model=self.endpoint.model, messages=judge_messages(generated, reference), **options
            )
        except openai.OpenAIError as exc:
            raise self.endpoint.error(exc) from None
        return (reply.choices[0].message.content or "") if reply.choices else ""
