"""Operations a client may queue are bounded: beyond the limit it is told to come back, the server's
memory and every other client's wait do not grow without bound."""

from __future__ import annotations

import threading
import time

import pytest

from reviewstack.common.errors import ResourceExhausted
from reviewstack.common.grpc import OperationRegistry
from reviewstack.common.grpc.operations import PENDING, RUNNING, SUCCEEDED


def _wait_for(registry: OperationRegistry, operation_id: str, state: int) -> None:
    deadline = time.monotonic() + 10
    while registry.get(operation_id).state != state:
        assert time.monotonic() < deadline, registry.get(operation_id)
        time.sleep(0.01)


def test_pending_operations_are_capped_and_the_cap_frees_up() -> None:
    registry = OperationRegistry(max_workers=1, max_pending=2)
    release = threading.Event()
    try:
        running = registry.start("k", lambda _: release.wait(10) and None)
        _wait_for(registry, running.id, RUNNING)
        queued = [registry.start("k", lambda _: None, request_id=f"r{i}") for i in range(2)]
        assert {registry.get(op.id).state for op in queued} == {PENDING}
        with pytest.raises(ResourceExhausted, match="limit is 2"):
            registry.start("k", lambda _: None)
        # a retried request with a known id is no new work: it gets its operation, not the refusal
        assert registry.start("k", lambda _: None, request_id="r1").id == queued[1].id
        assert registry.find("k", "r0").id == queued[0].id and registry.find("k", "") is None
        release.set()
        for op in queued:
            _wait_for(registry, op.id, SUCCEEDED)
        assert registry.start("k", lambda _: None, request_id="again").state in (PENDING, RUNNING, SUCCEEDED)
        assert registry.find("k", "again") is not None and registry.find("other", "again") is None
    finally:
        release.set()
        registry.shutdown()
