"""The Evaluation gRPC servicer: decode → `job.run_evaluation` as a long-running operation → encode.

The request is validated inside the RPC (bad names, a missing judge, an output it cannot write: the RPC's
own INVALID_ARGUMENT or FAILED_PRECONDITION); loading, matching and the report run in the operation,
whose progress clients follow through the Operations service. Every place a request names must lie
inside the server's store (or, for reading, its read-only roots), the judge is one of the endpoints its
operator configured, named, and the work a request asks for (systems, bootstrap resamples) is bounded.

ComparePaper reads a finished evaluation back (report.json and points.json under `evaluations/<id>/` of
the server's own store): a request names the evaluation by its id, which must have the form `eval_id`
gives it, and the paper and systems by names the report holds; it never names a location.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from reviewstack.common.errors import FailedPrecondition, InvalidArgument, NotFound
from reviewstack.common.grpc import OperationRegistry, ProgressReporter
from reviewstack.common.llm_endpoints import LLMEndpoint, pick_endpoint
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import ArtifactStore, open_store
from reviewstack.common.store.scope import StoreScope
from reviewstack.evaluation import evidence
from reviewstack.evaluation.evaluate import REPORT_FORMAT
from reviewstack.evaluation.job import (
    EVAL_ID,
    EvalConfig,
    EvalOutcome,
    SystemSpec,
    load_inputs,
    make_matcher,
    run_evaluation,
)
from reviewstack.v1 import evaluation_pb2, evaluation_pb2_grpc, operations_pb2

EVALUATE_KIND = "reviewstack.v1.Evaluation/Evaluate"
COMPARE_KIND = "reviewstack.v1.Evaluation/Compare"


@dataclass(frozen=True)
class RequestPolicy:
    """What a request may name on this server: places inside its store (systems and ground truth may
    also come from the operator's read-only roots), LLM judges by name, and bounded work."""

    scope: StoreScope
    llm_endpoints: Mapping[str, LLMEndpoint] = field(default_factory=dict)
    default_judge: str = ""
    max_bootstrap: int = 10_000
    max_systems: int = 32


def evaluate_request_to_config(
    request: evaluation_pb2.EvaluateRequest, policy: RequestPolicy
) -> tuple[EvalConfig, LLMEndpoint | None]:
    """The evaluation a request asks for, every location resolved inside what this server may touch,
    with the judge endpoint (and its key) when the request asked for the LLM matcher."""
    if len(request.systems) > policy.max_systems:
        raise InvalidArgument(
            f"{len(request.systems)} systems: one evaluation compares at most {policy.max_systems} "
            "(REVIEWSTACK_MAX_SYSTEMS); split them over several evaluations"
        )
    if not 0 <= request.bootstrap <= policy.max_bootstrap:
        raise InvalidArgument(
            f"bootstrap must be within [0, {policy.max_bootstrap}] resamples (0 = the default 1,000), "
            f"got {request.bootstrap}"
        )
    judge = None
    if request.matcher == "llm":
        judge = pick_endpoint(
            policy.llm_endpoints, request.judge.endpoint, default=policy.default_judge, what="judge"
        )
    scope = policy.scope
    config = EvalConfig(
        systems=[
            SystemSpec(name=s.name, uri=scope.location(s.uri, what=f"system {s.name!r}"))
            for s in request.systems
        ],
        human=scope.location(request.human, what="human"),
        output=scope.location(request.output or scope.store.uri, what="output", write=True),
        matcher=request.matcher or "embedded",
        judge_endpoint=judge.public_url if judge else "",
        judge_model=judge.model if judge else "",
        bootstrap=request.bootstrap or 1000,
        seed=request.seed,
    )  # a ValidationError becomes INVALID_ARGUMENT in the server's exception layer
    return config, judge


def compare_request_to_config(
    request: evaluation_pb2.CompareRequest, policy: RequestPolicy
) -> tuple[EvalConfig, LLMEndpoint | None]:
    return evaluate_request_to_config(
        evaluation_pb2.EvaluateRequest(
            systems=[request.a, request.b],
            human=request.human,
            output=request.output,
            matcher=request.matcher,
            judge=request.judge,
        ),
        policy,
    )


def outcome_to_pb(outcome: EvalOutcome) -> evaluation_pb2.EvaluationResult:
    from reviewstack.evaluation.summary import headline

    rows = headline(outcome.report)
    return evaluation_pb2.EvaluationResult(
        eval_id=outcome.eval_id,
        report_json=outcome.uris["report_json"],
        report_html=outcome.uris["report_html"],
        papers=len(outcome.report.get("papers", [])),
        exclusions=len(outcome.report.get("exclusions", [])),
        systems=[evaluation_pb2.SystemScore(**row) for row in rows],
    )


# -- ComparePaper: one paper of a finished evaluation, two systems side by side ----------------------------
MAX_NAME = 512  # characters of a paper id or system name a ComparePaper request may give


def _quoted(value: str, limit: int = 80) -> str:
    """A request's value as an error message quotes it: never longer than `limit` characters."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _listing(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" … and {len(names) - limit} more" if len(names) > limit else "")


def check_compare_paper_request(request: evaluation_pb2.ComparePaperRequest) -> None:
    """What can be refused before reading anything: overlong names, and an eval_id that is not one."""
    for name in ("paper_id", "a", "b"):
        if len(value := getattr(request, name)) > MAX_NAME:
            raise InvalidArgument(
                f"{name} is {len(value)} characters long; paper ids and system names of an evaluation "
                f"have at most {MAX_NAME}"
            )
    if not request.eval_id:
        raise InvalidArgument(
            "eval_id is empty: name a finished evaluation by the id Evaluate returned "
            "(EvaluationResult.eval_id, e.g. 20260101-120000-ab12cd34)"
        )
    if not EVAL_ID.fullmatch(request.eval_id):
        raise InvalidArgument(
            f"eval_id {_quoted(request.eval_id)} is not an evaluation id: expected YYYYmmdd-HHMMSS-xxxxxxxx "
            "(date, time, 8 hex digits), as EvaluationResult.eval_id gives it"
        )


def _latest_evaluations(store: ArtifactStore, count: int = 5) -> str:
    ids = [key.rpartition("/")[2] for key in store.list_dirs("evaluations")]
    ids = [i for i in ids if EVAL_ID.fullmatch(i)][-count:]
    return f"; the latest there: {', '.join(reversed(ids))}" if ids else "; it holds none"


def read_evaluation(store: ArtifactStore, eval_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """report.json and points.json of `evaluations/<eval_id>/` in `store` (blocking: run it in a thread).
    `eval_id` must have passed `check_compare_paper_request`."""
    prefix, what = f"evaluations/{eval_id}", f"evaluation {eval_id}"
    try:
        data = store.get_bytes(f"{prefix}/report.json")
    except NotFound:
        if store.exists(f"{prefix}/{evidence.FILE_NAME}"):
            raise FailedPrecondition(
                f"{what} has not finished, or failed while writing: its report.json, written last, is not "
                "there; wait for its operation to succeed"
            ) from None
        raise NotFound(
            f"no evaluation {eval_id} in this server's store ({store.uri_for('evaluations')})"
            + _latest_evaluations(store)
        ) from None
    try:
        report = json.loads(data)
    except ValueError as exc:
        raise FailedPrecondition(
            f"{what}: report.json is not JSON ({exc}); run the evaluation again"
        ) from exc
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT or not report.get("papers"):
        raise FailedPrecondition(
            f"{what}: report.json is not a report this service can read (format {REPORT_FORMAT}); "
            "run the evaluation again"
        )
    return report, evidence.read(store, prefix, what)


def _pick_systems(request: evaluation_pb2.ComparePaperRequest, systems: list[str], human: str) -> list[str]:
    """a and b as the request names them; an empty one is the first system the other does not name, and
    none when there is no other (a one-system evaluation)."""
    what = f"evaluation {request.eval_id}"
    for name in (request.a, request.b):
        if name and name not in systems:
            if name == human:
                raise InvalidArgument(
                    f"{_quoted(name)} is the human set of {what}, whose points are PaperComparison.human; "
                    f"name its systems: {_listing(systems)}"
                )
            raise NotFound(f"system {_quoted(name)} is not in {what}; its systems: {_listing(systems)}")
    if request.a and request.a == request.b:
        raise InvalidArgument(
            f"a and b both name {_quoted(request.a)}: name two different systems of {what} "
            f"({_listing(systems)}), or leave b empty for the first other one"
        )
    a = request.a or next((s for s in systems if s != request.b), "")
    b = request.b or next((s for s in systems if s != a), "")
    return [name for name in (a, b) if name]


def _system_on_paper(
    entry: Mapping[str, Any], review: Mapping[str, Any] | None, paper: str, humans: int, what: str
) -> evaluation_pb2.SystemOnPaper:
    """One system's review of `paper` with its hits, from its report entry and its points."""
    points = review["points"] if review else []
    scored = next((s for s in entry["per_paper"] if s["paper_id"] == paper), None)
    hit: dict[int, tuple[int, float]] = {}  # generated index → (human index, score)
    if scored is not None:
        if scored["generated_points"] != len(points) or scored["reference_points"] != humans:
            raise FailedPrecondition(
                f"{what}: report.json scores {scored['generated_points']} points of {entry['name']!r} "
                f"against {scored['reference_points']} human points on paper {paper!r}, points.json holds "
                f"{len(points)} and {humans}; the files do not belong together: run the evaluation again"
            )
        for generated, reference, score in scored["matches"]:
            if not (0 <= generated < len(points) and 0 <= reference < humans):
                raise FailedPrecondition(f"{what}: a match of {entry['name']!r} on {paper!r} points nowhere")
            if generated not in hit or score > hit[generated][1]:
                hit[generated] = (reference, float(score))
    out = evaluation_pb2.SystemOnPaper(
        name=entry["name"],
        points=[
            evaluation_pb2.GeneratedPoint(
                text=p["text"],
                aspect=p["aspect"] or "",
                hit=hit.get(i, (-1, 0.0))[0],
                score=hit.get(i, (-1, 0.0))[1],
            )
            for i, p in enumerate(points)
        ],
        empty_aspects=review["empty_aspects"] if review else [],
        missing_aspects=review["missing_aspects"] if review else [],
        hits=round(scored["hits"]) if scored else 0,
    )
    # unset = undefined (precision of a review without points) or not scored (no review, a judge failure)
    if scored is not None and scored["recall"] is not None:
        out.recall = scored["recall"]
    if scored is not None and scored["precision"] is not None:
        out.precision = scored["precision"]
    return out


def paper_comparison(
    request: evaluation_pb2.ComparePaperRequest, report: Mapping[str, Any], points: Mapping[str, Any]
) -> evaluation_pb2.PaperComparison:
    """The paper and the systems the request names (or the defaults), as the evaluation judged them."""
    what = f"evaluation {request.eval_id}"
    papers = list(report["papers"])
    paper = request.paper_id or papers[0]
    if paper not in papers:
        raise NotFound(
            f"paper {_quoted(paper)} is not in {what}; its {len(papers)} papers: {_listing(papers)}"
        )
    entries = {entry["name"]: entry for entry in report["systems"]}
    names = _pick_systems(request, list(entries), report["human"]["name"])
    on_paper = evidence.paper_points(points, paper, what)
    human = on_paper["human"]
    matcher = report["matcher"]
    return evaluation_pb2.PaperComparison(
        eval_id=request.eval_id,
        paper_id=paper,
        papers=papers,
        systems=list(entries),
        human=[
            evaluation_pb2.HumanPoint(text=p["text"], aspect=p["aspect"] or "", reviewer=p["reviewer"])
            for p in human
        ],
        compared=[
            _system_on_paper(entries[name], on_paper["systems"].get(name), paper, len(human), what)
            for name in names
        ],
        matcher=f"{matcher['name']} {matcher['version']}",
    )


class EvaluationServicer(evaluation_pb2_grpc.EvaluationServicer):
    def __init__(self, settings: StoreSettings, operations: OperationRegistry, policy: RequestPolicy) -> None:
        self.settings = settings
        self.operations = operations
        self.policy = policy

    async def Evaluate(
        self, request: evaluation_pb2.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        return await self._start(EVALUATE_KIND, request.request_id, evaluate_request_to_config, request)

    async def Compare(
        self, request: evaluation_pb2.CompareRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        return await self._start(COMPARE_KIND, request.request_id, compare_request_to_config, request)

    async def ComparePaper(
        self, request: evaluation_pb2.ComparePaperRequest, context: grpc.aio.ServicerContext
    ) -> evaluation_pb2.PaperComparison:
        check_compare_paper_request(request)
        # the server's own store, never a location from the request; reading and parsing off the event loop
        report, points = await asyncio.to_thread(read_evaluation, self.policy.scope.store, request.eval_id)
        return paper_comparison(request, report, points)

    async def _start(self, kind: str, request_id: str, decode: Any, request: Any) -> operations_pb2.Operation:
        # a retried request returns its operation without starting another
        if (existing := self.operations.find(kind, request_id)) is not None:
            return existing
        # what a user must fix is the RPC's own error: a bad request, a place outside the store, an
        # unknown judge, an output it cannot write, an unknown system, a missing dataset, no shared paper
        config, judge = decode(request, self.policy)
        matcher = make_matcher(config, judge)
        await asyncio.to_thread(open_store(config.output, self.settings).check_writable)
        inputs = await asyncio.to_thread(load_inputs, config, self.settings)

        def work(reporter: ProgressReporter) -> evaluation_pb2.EvaluationResult:
            def progress(stage: str, done: int = 0, total: int = 0, message: str = "") -> None:
                reporter.check_cancelled()
                reporter.update(stage=stage, done=done, total=total, message=message)

            return outcome_to_pb(run_evaluation(config, self.settings, progress, matcher, inputs))

        return self.operations.start(kind, work, request_id=request_id)
