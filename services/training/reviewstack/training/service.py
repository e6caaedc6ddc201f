"""The Training gRPC servicer: thin decode → call → encode over `TrainingController`.

SubmitRun validates the spec (INVALID_ARGUMENT naming each bad field), the dataset (NOT_FOUND with
its URI) and the hardware (FAILED_PRECONDITION) inside the RPC, before anything is launched; the run
itself is an operation that WatchRun (or the Operations service) follows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from reviewstack.common.errors import InvalidArgument
from reviewstack.training.controller import TrainingController
from reviewstack.training.specs import requested_resources, spec_from_pb
from reviewstack.v1 import training_pb2, training_pb2_grpc


def _run_id(value: str) -> str:
    if not value:
        raise InvalidArgument("run_id is required")
    return value


class TrainingServicer(training_pb2_grpc.TrainingServicer):
    def __init__(self, controller: TrainingController) -> None:
        self.controller = controller

    async def SubmitRun(
        self, request: training_pb2.SubmitRunRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.Run:
        # a retried request returns its run before anything is checked again (or a new id invented)
        if (existing := self.controller.find_request(request.request_id)) is not None:
            return existing
        spec = spec_from_pb(request.spec, self.controller.settings.store)
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
