"""The Review gRPC servicer: admission control in front of the reviewer.

More requests in flight than `max_in_flight` are refused at once with RESOURCE_EXHAUSTED rather than
queued without bound: a caller that gets it can back off, one that hangs cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import grpc

from reviewstack.common.errors import ResourceExhausted
from reviewstack.review.reviewer import Reviewer
from reviewstack.v1 import review_pb2, review_pb2_grpc


class ReviewServicer(review_pb2_grpc.ReviewServicer):
    def __init__(self, reviewer: Reviewer, max_in_flight: int) -> None:
        self.reviewer = reviewer
        self.max_in_flight = max_in_flight
        self._in_flight = 0

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        if self._in_flight >= self.max_in_flight:
            raise ResourceExhausted(
                f"{self._in_flight} reviews in progress (the limit is {self.max_in_flight}); retry later"
            )
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    async def Review(
        self, request: review_pb2.ReviewRequest, context: grpc.aio.ServicerContext
    ) -> review_pb2.ReviewResponse:
        with self._admitted():
            return await self.reviewer.review(request)

    async def StreamReview(
        self, request: review_pb2.ReviewRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[review_pb2.ReviewChunk]:
        with self._admitted():
            async for chunk in self.reviewer.stream(request):
                yield chunk
                await asyncio.sleep(0)
