"""The Evaluation gRPC servicer: decode → `job.run_evaluation` as a long-running operation → encode.

The request is validated inside the RPC (bad names, a missing judge, an output it cannot write: the RPC's
own INVALID_ARGUMENT or FAILED_PRECONDITION); loading, matching and the report run in the operation,
whose progress clients follow through the Operations service. Every place a request names must lie
inside the server's store (or, for reading, its read-only roots), the judge is one of the endpoints its
operator configured, named, and the work a request asks for (systems, bootstrap resamples) is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from reviewstack.common.errors import InvalidArgument
from reviewstack.common.grpc import OperationRegistry, ProgressReporter
from reviewstack.common.llm_endpoints import LLMEndpoint, pick_endpoint
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import open_store
from reviewstack.common.store.scope import StoreScope
from reviewstack.evaluation.job import (
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
