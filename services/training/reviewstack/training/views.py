"""Run messages built from what is known about a run when no live operation follows it: a run found
in the store (started by kubectl, or before this controller restarted), or one the operation registry
has forgotten. status.json (and, on Kubernetes, the Job) say where it stands.
"""

from __future__ import annotations

import contextlib
import json

import grpc

from reviewstack.common import errors
from reviewstack.common.runspec import validate_train_spec
from reviewstack.common.store import ArtifactStore
from reviewstack.training.launchers import LaunchState
from reviewstack.training.specs import spec_to_pb
from reviewstack.training.status import JobStatus, published_artifacts, read_status, run_prefix
from reviewstack.v1 import operations_pb2, training_pb2

SUBMIT_KIND = "reviewstack.v1.Training/SubmitRun"
_STATES = {
    "pending": operations_pb2.OPERATION_STATE_PENDING,
    "running": operations_pb2.OPERATION_STATE_RUNNING,
    "succeeded": operations_pb2.OPERATION_STATE_SUCCEEDED,
    "failed": operations_pb2.OPERATION_STATE_FAILED,
    "cancelled": operations_pb2.OPERATION_STATE_CANCELLED,
}


def run_stage(state: LaunchState, status: JobStatus) -> str:
    """The progress stage shown for a run: pending, starting (no step yet), training, or how it ended."""
    if state.phase == "pending":
        return "pending"
    if state.terminal:
        return state.phase
    return "training" if status.total_steps else "starting"


def stored_run(
    store: ArtifactStore, run_id: str, launch: LaunchState | None, log_location: str
) -> training_pb2.Run:
    """The Run message of runs/<run-id>/ in `store`; NotFound when the store holds nothing of it."""
    prefix = run_prefix(run_id)
    status = read_status(store, run_id)
    has_spec = store.exists(f"{prefix}/spec.json")
    if not has_spec and not status.state and launch is None:
        raise errors.NotFound(
            f"run {run_id!r} not found: this controller did not start it and {store.uri_for(prefix)} "
            "holds no spec.json or status.json"
        )
    pb = training_pb2.Run(
        run_id=run_id,
        metrics=status.all_metrics(),
        uri=store.uri_for(prefix),
        log=log_location,
        artifacts=published_artifacts(store, run_id),
        attempts=launch.attempts if launch else 0,
    )
    if has_spec:
        try:
            spec = validate_train_spec(json.loads(store.get_bytes(f"{prefix}/spec.json")))
            pb.spec.CopyFrom(spec_to_pb(spec))
        except (errors.ReviewStackError, ValueError):
            pb.spec.run_id = run_id  # a spec this version cannot read: report the run anyway
    pb.operation.CopyFrom(synthetic_operation(run_id, launch, status))
    return pb


def synthetic_operation(
    run_id: str, launch: LaunchState | None, status: JobStatus
) -> operations_pb2.Operation:
    """An Operation describing a run that no live operation follows (found in the store, or forgotten)."""
    phase = launch.phase if launch is not None else (status.state if status.state in _STATES else "pending")
    op = operations_pb2.Operation(
        kind=SUBMIT_KIND,
        state=_STATES[phase],
        progress=operations_pb2.Progress(
            done=status.step,
            total=status.total_steps,
            stage=run_stage(launch or LaunchState(phase), status),
            message=status.describe()
            or (launch.message if launch else "")
            or "read from the store; this controller does not follow it",
        ),
    )
    if phase == "failed":
        code = grpc.StatusCode.INVALID_ARGUMENT if launch and launch.bad_input else grpc.StatusCode.INTERNAL
        op.error.code = code.value[0]
        op.error.message = status.message or (launch.message if launch else "") or f"run {run_id} failed"
    if status.updated_at:
        with contextlib.suppress(ValueError):  # a timestamp this parser cannot read: leave it unset
            op.update_time.FromJsonString(status.updated_at.replace("+00:00", "Z"))
    return op
