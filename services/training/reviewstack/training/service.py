"""The Training gRPC servicer: thin decode → call → encode over `TrainingController`.

SubmitRun validates the spec (INVALID_ARGUMENT naming each bad field), the dataset (NOT_FOUND with
its URI) and the hardware (FAILED_PRECONDITION) inside the RPC, before anything is launched; the run
itself is an operation that WatchRun (or the Operations service) follows.

A run is launched with the controller's credentials, so what its spec may point at is confined
(`RequestPolicy`): its dataset and output lie inside the controller's store (PERMISSION_DENIED
otherwise; keys such as `datasets/x/v1` are accepted and sent to the job as full URIs), and its base
model is a directory under one of the roots the operator listed (REVIEWSTACK_BASE_MODEL_ROOTS).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc

from reviewstack.common.errors import InvalidArgument, PermissionDenied
from reviewstack.common.runspec import TrainSpec, check_run_id
from reviewstack.common.store.scope import StoreScope
from reviewstack.training.controller import TrainingController
from reviewstack.training.specs import requested_resources, spec_from_pb
from reviewstack.v1 import training_pb2, training_pb2_grpc


@dataclass(frozen=True)
class RequestPolicy:
    """Where a submitted run may read and write: the controller's store, and the operator's model roots."""

    scope: StoreScope
    base_model_roots: Sequence[str] = ()

    def confine(self, spec: TrainSpec) -> TrainSpec:
        """The spec with its dataset and output as full URIs inside the store; PermissionDenied when a
        location (or the base model) lies anywhere else."""
        self._check_base_model(spec.base_model)
        return spec.model_copy(
            update={
                "dataset": self.scope.location(spec.dataset, what="dataset"),
                "output": self.scope.location(spec.output, what="output", write=True),
            }
        )

    def _check_base_model(self, path: str) -> None:
        roots = [os.path.normpath(r) for r in self.base_model_roots]
        if "://" not in path and os.path.isabs(path):
            # as written (what a pod will open) and, where it exists here, with its symlinks resolved
            seen = {os.path.normpath(path)} | ({os.path.realpath(path)} if os.path.exists(path) else set())
            if roots and all(any(_under(p, r) for r in roots) for p in seen):
                return
        raise PermissionDenied(
            f"base_model {path!r} is not under the model directories this controller's operator allows "
            f"({', '.join(roots) or 'none are configured: set REVIEWSTACK_BASE_MODEL_ROOTS'}); "
            "name a model directory under one of them"
        )


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _run_id(value: str) -> str:
    if not value:
        raise InvalidArgument("run_id is required")
    try:
        return check_run_id(value)
    except ValueError as exc:
        raise InvalidArgument(f"run_id {value[:80]!r}: {exc}") from None


class TrainingServicer(training_pb2_grpc.TrainingServicer):
    def __init__(self, controller: TrainingController, policy: RequestPolicy) -> None:
        self.controller = controller
        self.policy = policy

    async def SubmitRun(
        self, request: training_pb2.SubmitRunRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.Run:
        # a retried request returns its run before anything is checked again (or a new id invented)
        if (existing := self.controller.find_request(request.request_id)) is not None:
            return existing
        spec = self.policy.confine(spec_from_pb(request.spec, self.controller.settings.store))
        gpus, nodes = requested_resources(request.spec)
        return await asyncio.to_thread(self.controller.submit, spec, gpus, nodes, request.request_id)

    async def GetRun(
        self, request: training_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.Run:
        return await asyncio.to_thread(self.controller.get, _run_id(request.run_id))

    async def ListRuns(
        self, request: training_pb2.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ListRunsResponse:
        return training_pb2.ListRunsResponse(runs=await asyncio.to_thread(self.controller.list))

    async def CancelRun(
        self, request: training_pb2.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.Run:
        return await asyncio.to_thread(self.controller.cancel, _run_id(request.run_id))

    async def WatchRun(
        self, request: training_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[training_pb2.Run]:
        async for run in self.controller.watch(_run_id(request.run_id)):
            yield run
