"""The Evaluation gRPC servicer: decode → `job.run_evaluation` as a long-running operation → encode.

The request is validated inside the RPC (bad names, a missing judge, an output it cannot write: the RPC's
own INVALID_ARGUMENT or FAILED_PRECONDITION); loading, matching and the report run in the operation,
whose progress clients follow through the Operations service.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from reviewstack.common.grpc import OperationRegistry, ProgressReporter
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import open_store
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


def evaluate_request_to_config(
    request: evaluation_pb2.EvaluateRequest, settings: StoreSettings, judge: tuple[str, str]
) -> EvalConfig:
    return EvalConfig(
        systems=[SystemSpec(name=s.name, uri=s.uri) for s in request.systems],
        human=request.human,
        output=request.output or settings.store,
        matcher=request.matcher or "embedded",
        judge_endpoint=request.judge.endpoint or judge[0],
        judge_model=request.judge.model or judge[1],
        bootstrap=request.bootstrap or 1000,
        seed=request.seed,
    )  # a ValidationError becomes INVALID_ARGUMENT in the server's exception layer


def compare_request_to_config(
    request: evaluation_pb2.CompareRequest, settings: StoreSettings, judge: tuple[str, str]
) -> EvalConfig:
    return evaluate_request_to_config(
        evaluation_pb2.EvaluateRequest(
            systems=[request.a, request.b],
            human=request.human,
            output=request.output,
            matcher=request.matcher,
            judge=request.judge,
        ),
        settings,
        judge,
    )


def config_to_request(config: EvalConfig) -> evaluation_pb2.EvaluateRequest:
    """The inverse of `evaluate_request_to_config`, for clients (the CLI's --server mode)."""
    return evaluation_pb2.EvaluateRequest(
        systems=[evaluation_pb2.SystemRef(name=s.name, uri=s.uri) for s in config.systems],
        human=config.human,
        output=config.output,
        matcher=config.matcher,
        judge=evaluation_pb2.JudgeSpec(endpoint=config.judge_endpoint, model=config.judge_model),
        bootstrap=config.bootstrap,
        seed=config.seed,
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
    def __init__(
        self, settings: StoreSettings, operations: OperationRegistry, judge: tuple[str, str] = ("", "")
    ) -> None:
        self.settings = settings
        self.operations = operations
        self.judge = judge

    async def Evaluate(
        self, request: evaluation_pb2.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        return await self._start(EVALUATE_KIND, request.request_id, evaluate_request_to_config, request)

    async def Compare(
        self, request: evaluation_pb2.CompareRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        return await self._start(COMPARE_KIND, request.request_id, compare_request_to_config, request)

    async def _start(self, kind: str, request_id: str, decode: Any, request: Any) -> operations_pb2.Operation:
        if request_id:  # a retried request returns its operation without starting another
            for existing in self.operations.list(kind):
                if existing.request_id == request_id:
                    return existing
        # what a user must fix is the RPC's own error: a bad request, a missing judge, an output it
        # cannot write, an unknown system, a missing dataset, inputs that share no paper
        config = decode(request, self.settings, self.judge)
        matcher = make_matcher(config)
        await asyncio.to_thread(open_store(config.output, self.settings).check_writable)
        inputs = await asyncio.to_thread(load_inputs, config, self.settings)

        def work(reporter: ProgressReporter) -> evaluation_pb2.EvaluationResult:
            def progress(stage: str, done: int = 0, total: int = 0, message: str = "") -> None:
                reporter.check_cancelled()
                reporter.update(stage=stage, done=done, total=total, message=message)

            return outcome_to_pb(run_evaluation(config, self.settings, progress, matcher, inputs))

        return self.operations.start(kind, work, request_id=request_id)
