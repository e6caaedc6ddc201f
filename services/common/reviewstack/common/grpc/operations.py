"""Long-running operations: work that outlives an RPC, run in a worker thread, watched over gRPC.

A handler calls `registry.start(kind, work, request_id)` and returns the Operation at once; `work` runs
in a thread pool (dataset builds and evaluations are CPU-bound and must not stall the event loop) and
reports through a `ProgressReporter`. Watchers are asyncio coroutines, woken from the worker thread with
`loop.call_soon_threadsafe`; wake-ups are coalesced, so a worker may report progress thousands of times
a second without flooding the loop. Everything is in memory: operations do not survive a restart.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message

from reviewstack.common import errors
from reviewstack.common.logging import get_logger
from reviewstack.v1 import operations_pb2, operations_pb2_grpc

log = get_logger(__name__)

State = operations_pb2.OperationState
PENDING = operations_pb2.OPERATION_STATE_PENDING
RUNNING = operations_pb2.OPERATION_STATE_RUNNING
SUCCEEDED = operations_pb2.OPERATION_STATE_SUCCEEDED
FAILED = operations_pb2.OPERATION_STATE_FAILED
CANCELLED = operations_pb2.OPERATION_STATE_CANCELLED
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
INTERNAL_CODE = grpc.StatusCode.INTERNAL.value[0]

Work = Callable[["ProgressReporter"], Message | None]


def is_terminal(op: operations_pb2.Operation) -> bool:
    """Whether an operation has finished (succeeded, failed or was cancelled)."""
    return op.state in TERMINAL


class _Watcher:
    """One waiting watch() coroutine: its loop and event, and whether a wake-up is already queued."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()
        self.queued = False  # guarded by the registry lock

    def _wake(self, lock: threading.Lock) -> None:
        with lock:
            self.queued = False
        self.event.set()


@dataclass
class _Record:
    """Mutable state of one operation; every field is guarded by the registry lock."""

    id: str
    kind: str
    request_id: str
    create_ns: int
    state: int = PENDING
    stage: str = ""
    done: int = 0
    total: int = 0
    message: str = ""
    result: any_pb2.Any | None = None
    error: tuple[int, str] | None = None
    update_ns: int = 0
    version: int = 0
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    watchers: set[_Watcher] = field(default_factory=set)

    def to_pb(self) -> operations_pb2.Operation:
        op = operations_pb2.Operation(
            id=self.id,
            kind=self.kind,
            state=self.state,
            request_id=self.request_id,
            progress=operations_pb2.Progress(
                done=self.done, total=self.total, stage=self.stage, message=self.message
            ),
            create_time=_timestamp(self.create_ns),
            update_time=_timestamp(self.update_ns or self.create_ns),
        )
        if self.result is not None:
            op.result.CopyFrom(self.result)
        if self.error is not None:
            op.error.code, op.error.message = self.error
        return op


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    return ts


class ProgressReporter:
    """What `work` gets: report progress, and learn that a client asked to cancel."""

    def __init__(self, registry: OperationRegistry, record: _Record) -> None:
        self._registry = registry
        self._record = record

    @property
    def operation_id(self) -> str:
        return self._record.id

    def update(
        self,
        *,
        stage: str | None = None,
        done: int | None = None,
        total: int | None = None,
        message: str | None = None,
    ) -> None:
        """Change the given fields; a new stage resets done/total unless they are given too."""
        with self._registry._lock:
            rec = self._record
            if stage is not None and stage != rec.stage:
                rec.stage, rec.done, rec.total = stage, 0, 0
            if done is not None:
                rec.done = done
            if total is not None:
                rec.total = total
            if message is not None:
                rec.message = message
            self._registry._changed(rec)

    def cancelled(self) -> bool:
        """Whether a client asked to cancel (for work that wants to clean up before stopping)."""
        return self._record.cancel_requested.is_set()

    def check_cancelled(self) -> None:
        """Raise errors.Cancelled once a client asked to cancel; call it between units of work."""
        if self._record.cancel_requested.is_set():
            raise errors.Cancelled(f"operation {self._record.id} was cancelled at a client's request")


class OperationRegistry:
    """In-memory operations of one server: start, get, list, watch, cancel.

    `max_workers` bounds how many operations run at once (the rest wait PENDING): builds are heavy, and
    queueing them beats thrashing one machine. `max_pending` bounds that queue: a client that starts work
    faster than the server finishes it gets RESOURCE_EXHAUSTED instead of growing the server's memory
    and everyone's wait without limit. `keep_finished` bounds memory: older finished operations are
    forgotten (get() then answers NotFound).
    """

    def __init__(self, max_workers: int = 4, keep_finished: int = 1000, max_pending: int = 16) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        self._finished: collections.deque[str] = collections.deque()
        self._keep_finished = keep_finished
        self._watches_ended = False
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="operation")

    def start(self, kind: str, work: Work, request_id: str = "") -> operations_pb2.Operation:
        """Accept `work` and return its operation at once; the same (kind, request_id) returns the
        operation already started for it, so a client may safely retry the starting RPC."""
        with self._lock:
            if request_id and (existing := self._by_key.get((kind, request_id))) is not None:
                return self._records[existing].to_pb()
            pending = sum(1 for r in self._records.values() if r.state == PENDING)
            if pending >= self._max_pending:
                raise errors.ResourceExhausted(
                    f"{pending} operations are already waiting to run on this server (the limit is "
                    f"{self._max_pending}); retry when some have finished, or raise "
                    "REVIEWSTACK_MAX_PENDING_OPERATIONS"
                )
            rec = _Record(id=uuid.uuid4().hex, kind=kind, request_id=request_id, create_ns=time.time_ns())
            self._records[rec.id] = rec
            if request_id:
                self._by_key[(kind, request_id)] = rec.id
            snapshot = rec.to_pb()
        # the worker logs under the caller's request id: copy the context into the thread
        context = contextvars.copy_context()
        try:
            self._pool.submit(context.run, self._run, rec, work)
        except RuntimeError as exc:  # the pool is shut down: the server is stopping
            with self._lock:
                self._records.pop(rec.id, None)
                self._by_key.pop((kind, request_id), None)
            raise errors.Unavailable("the server is shutting down; retry against another replica") from exc
        log.info("operation accepted", operation_id=rec.id, kind=kind)
        return snapshot

    def get(self, operation_id: str) -> operations_pb2.Operation:
        with self._lock:
            return self._record(operation_id).to_pb()

    def find(self, kind: str, request_id: str) -> operations_pb2.Operation | None:
        """The operation a client's idempotency key already started, if the registry still holds it: a
        retried starting RPC returns it before checking (or starting) anything again."""
        if not request_id:
            return None
        with self._lock:
            existing = self._by_key.get((kind, request_id))
            return self._records[existing].to_pb() if existing is not None else None

    def list(self, kind: str = "") -> list[operations_pb2.Operation]:
        """Operations, newest first; only those of `kind` when given."""
        with self._lock:
            recs = [r for r in self._records.values() if not kind or r.kind == kind]
            return [r.to_pb() for r in sorted(recs, key=lambda r: r.create_ns, reverse=True)]

    def cancel(self, operation_id: str) -> operations_pb2.Operation:
        """Ask an operation to stop. A pending one is cancelled at once; a running one when its work
        next calls check_cancelled(); a finished one is left as it is."""
        with self._lock:
            rec = self._record(operation_id)
            if rec.state not in TERMINAL:
                rec.cancel_requested.set()
                if rec.state == PENDING:
                    self._finish(rec, CANCELLED, message="cancelled before it started")
                else:
                    rec.message = "cancel requested"
                    self._changed(rec)
            return rec.to_pb()

    async def watch(self, operation_id: str) -> AsyncIterator[operations_pb2.Operation]:
        """Yield the operation now and at every change after, ending with its terminal state."""
        watcher = _Watcher(asyncio.get_running_loop())
        with self._lock:
            rec = self._record(operation_id)
            rec.watchers.add(watcher)
        seen = -1
        try:
            while True:
                # clear before reading: a change after the read sets the event again, none is lost
                watcher.event.clear()
                with self._lock:
                    closing, version, snapshot = self._watches_ended, rec.version, rec.to_pb()
                if closing:
                    raise errors.Unavailable(
                        f"the server is shutting down; operation {operation_id} was "
                        f"{State.Name(snapshot.state)} when the watch ended"
                    )
                if version != seen:
                    seen = version
                    yield snapshot
                if snapshot.state in TERMINAL:
                    return
                await watcher.event.wait()
        finally:
            with self._lock:
                rec.watchers.discard(watcher)

    def end_watches(self) -> None:
        """End every watch (now and later) with Unavailable: a draining server must not wait its whole
        grace period for streams that only end when an operation does."""
        with self._lock:
            self._watches_ended = True
            for rec in self._records.values():
                self._wake_watchers(rec)

    def shutdown(self, cancel_running: bool = True) -> None:
        """Stop taking work; ask running operations to stop (the process exit waits for their threads)."""
        if cancel_running:
            with self._lock:
                running = [r.id for r in self._records.values() if r.state not in TERMINAL]
            for op_id in running:
                self.cancel(op_id)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- internals: called with self._lock held unless said otherwise --

    def _record(self, operation_id: str) -> _Record:
        rec = self._records.get(operation_id)
        if rec is None:
            raise errors.NotFound(
                f"operation {operation_id!r} not found: the id is wrong, the server restarted, or it "
                f"finished more than {self._keep_finished} operations ago"
            )
        return rec

    def _changed(self, rec: _Record) -> None:
        rec.version += 1
        rec.update_ns = time.time_ns()
        self._wake_watchers(rec)

    def _wake_watchers(self, rec: _Record) -> None:
        for w in rec.watchers:
            if not w.queued:  # one queued wake-up per watcher is enough: it reads the latest state
                w.queued = True
                # RuntimeError: the watcher's loop is closed; its coroutine is gone with it
                with contextlib.suppress(RuntimeError):
                    w.loop.call_soon_threadsafe(w._wake, self._lock)

    def _finish(
        self,
        rec: _Record,
        state: int,
        *,
        result: any_pb2.Any | None = None,
        error: tuple[int, str] | None = None,
        message: str | None = None,
    ) -> None:
        rec.state, rec.result, rec.error = state, result, error
        if message is not None:
            rec.message = message
        self._changed(rec)
        self._finished.append(rec.id)
        while len(self._finished) > self._keep_finished:
            old = self._records.pop(self._finished.popleft())
            self._by_key.pop((old.kind, old.request_id), None)

    def _run(self, rec: _Record, work: Work) -> None:
        """Worker thread: run the work and record how it ended (lock taken here as needed)."""
        with self._lock:
            if rec.state != PENDING:
                return  # cancelled while queued
            rec.state = RUNNING
            self._changed(rec)
        state, packed, error, message = SUCCEEDED, None, None, None
        try:
            result = work(ProgressReporter(self, rec))
            if result is not None:
                packed = any_pb2.Any()
                packed.Pack(result)
        except errors.Cancelled as exc:
            state, message = CANCELLED, str(exc)
        except errors.ReviewStackError as exc:
            state, error = FAILED, (exc.grpc_code.value[0], str(exc))
        except Exception as exc:
            log.error("operation failed", operation_id=rec.id, kind=rec.kind, exc_info=exc)
            state = FAILED
            error = (INTERNAL_CODE, f"internal error (operation {rec.id}); see the server log")
        with self._lock:
            self._finish(rec, state, result=packed, error=error, message=message)
        log.info("operation finished", operation_id=rec.id, kind=rec.kind, state=State.Name(state))


class OperationsServicer(operations_pb2_grpc.OperationsServicer):
    """The Operations service over a registry: decode, call, encode (errors map in the interceptor)."""

    def __init__(self, registry: OperationRegistry) -> None:
        self.registry = registry

    async def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        return self.registry.get(request.id)

    async def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.ListOperationsResponse:
        return operations_pb2.ListOperationsResponse(operations=self.registry.list(request.kind))

    async def WatchOperation(
        self, request: operations_pb2.GetOperationRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[operations_pb2.Operation]:
        async for op in self.registry.watch(request.id):
            yield op

    async def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        return self.registry.cancel(request.id)
