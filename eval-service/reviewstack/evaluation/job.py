"""One evaluation, start to end: load the systems and the human set, align their papers, match, score,
write `evaluations/<eval-id>/`. The CLI runs it in process, the gRPC service as an operation; both go
through `run_evaluation`, so a local run and a remote one give the same report."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from reviewstack.common.errors import InvalidArgument
from reviewstack.common.llm_endpoints import LLMEndpoint
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import open_store
from reviewstack.evaluation.model import Exclusion, Matcher, System

Progress = Callable[[str, int, int, str], None]
# What `EvalConfig.eval_id` makes: a request naming an evaluation is checked against it, so that an id is
# never a path (no separator, no dot) before it becomes part of a store key.
EVAL_ID = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{8}")


class SystemSpec(BaseModel):
    name: str = Field(min_length=1)
    uri: str = Field(min_length=1)

    @classmethod
    def parse(cls, text: str) -> SystemSpec:
        """`NAME=URI`, as the CLI takes it."""
        name, sep, uri = text.partition("=")
        if not sep or not name.strip() or not uri.strip():
            raise InvalidArgument(f"--system {text!r}: expected NAME=URI, e.g. ours=./store/reviews/ours")
        return cls(name=name.strip(), uri=uri.strip())


class EvalConfig(BaseModel):
    """What an evaluation is asked to do; its hash names the evaluation."""

    systems: list[SystemSpec] = Field(min_length=1)
    human: str = Field(min_length=1, description="data-prep dataset folder URI (ground_truth.jsonl)")
    output: str = Field(min_length=1, description="store URI or directory for evaluations/<eval-id>/")
    matcher: Literal["embedded", "pair", "llm"] = "embedded"
    judge_endpoint: str = ""
    judge_model: str = ""
    bootstrap: int = Field(1000, ge=0)
    seed: int = 0

    @field_validator("systems")
    @classmethod
    def _distinct_names(cls, systems: list[SystemSpec]) -> list[SystemSpec]:
        names = [s.name for s in systems]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"system names must be distinct: {', '.join(repeated)} given twice")
        return systems

    def eval_id(self, now: datetime | None = None) -> str:
        """Time first (listings sort by it), then a hash of the request (the same request twice in one
        second is the same evaluation)."""
        digest = hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:8]
        return f"{(now or datetime.now(UTC)):%Y%m%d-%H%M%S}-{digest}"


@dataclass(frozen=True)
class EvalOutcome:
    eval_id: str
    uris: dict[str, str]  # report_json, report_html, points_json, plots/…
    report: dict[str, Any]


def make_matcher(config: EvalConfig, judge: LLMEndpoint | None = None) -> Matcher:
    """The matcher `config` names; `judge` is the endpoint (with its key) a server resolved, else the
    judge is `config.judge_endpoint` with the key in OPENAI_API_KEY (the CLI)."""
    if config.matcher == "llm":
        from reviewstack.evaluation.matching_llm import LLMMatcher

        if judge is not None:
            return LLMMatcher(judge.url, judge.model, api_key=judge.api_key)
        if not config.judge_endpoint or not config.judge_model:
            raise InvalidArgument(
                "matcher 'llm' needs a judge: an OpenAI-compatible endpoint and a model name "
                "(--judge-endpoint http://host:8080/v1 --judge-model NAME)"
            )
        return LLMMatcher(config.judge_endpoint, config.judge_model)
    if config.matcher == "pair":
        from reviewstack.evaluation.matching_pair import pair_matcher

        return pair_matcher()
    from reviewstack.evaluation.matching import default_matcher

    return default_matcher()


@dataclass
class Inputs:
    """The loaded systems and human set, and the papers they share (with what was left out, and why)."""

    systems: list[System]
    human: System
    papers: list[str]
    exclusions: list[Exclusion]


def load_inputs(config: EvalConfig, settings: StoreSettings, progress: Progress | None = None) -> Inputs:
    """Everything the request names, read and aligned: the service does this inside the RPC, so an
    unknown system or a missing dataset is the call's own error, not a failed operation later."""
    from reviewstack.evaluation.sources import align_papers, load_human, load_system

    report_progress = progress or (lambda *_: None)
    total = len(config.systems) + 1
    systems = []
    for index, spec in enumerate(config.systems):
        report_progress("loading", index, total, spec.name)
        systems.append(load_system(spec.name, spec.uri, settings))
    report_progress("loading", total - 1, total, "human reviews")
    human = load_human(config.human, settings)
    report_progress("loading", total, total, "")
    papers, exclusions = align_papers(systems, human)
    if not papers:
        raise InvalidArgument(
            "the systems and the human set share no paper: "
            + "; ".join(f"{e.what}: {e.reason}" for e in exclusions[:5])
        )
    return Inputs(systems, human, papers, exclusions)


def run_evaluation(
    config: EvalConfig,
    settings: StoreSettings,
    progress: Progress | None = None,
    matcher: Matcher | None = None,
    inputs: Inputs | None = None,
) -> EvalOutcome:
    from reviewstack.evaluation import evidence
    from reviewstack.evaluation.evaluate import evaluate
    from reviewstack.evaluation.report import write_report

    report_progress = progress or (lambda *_: None)
    output = open_store(config.output, settings)
    output.check_writable()
    inputs = inputs or load_inputs(config, settings, progress)
    report = evaluate(
        inputs.systems,
        inputs.human,
        matcher or make_matcher(config),
        papers=inputs.papers,
        exclusions=inputs.exclusions,
        bootstrap=config.bootstrap,
        seed=config.seed,
        progress=report_progress,
    )
    eval_id = config.eval_id()
    report["eval_id"] = eval_id
    report["request"] = json.loads(config.model_dump_json())
    report_progress("writing", 0, 1, "report")
    prefix = f"evaluations/{eval_id}"
    # the point texts the report's match indices refer to: before report.json, which is written last
    points_uri = evidence.write(evidence.build(report, inputs.systems, inputs.human), output, prefix)
    uris = {**write_report(report, output, prefix), "points_json": points_uri}
    report_progress("writing", 1, 1, "report")
    return EvalOutcome(eval_id, uris, report)
