"""The training controller: accepts runs, launches them, follows them, and answers for them.

    controller = TrainingController(settings, make_launcher(settings))
    run = controller.submit(spec, gpus=None, nodes=None, request_id="…")   # preflight, spec.json, launch
    controller.get(run_id) / list() / cancel(run_id) / watch(run_id)

Each submitted run is an operation (Operations service: Get/Watch/Cancel work on it too) whose work is
the following loop: launch, then every poll interval read the launcher's state and the job's
status.json, publish progress, and finish the way the run finished. Runs this controller did not start
(before a restart, by kubectl) are read from the store's runs/<run-id>/ and, on Kubernetes, their Job.

When the server stops, local runs are stopped too (SIGTERM: they checkpoint, and resume when
resubmitted); Kubernetes Jobs are left running — a controller upgrade must not kill a week of training.

A run id names one spec for good. SubmitRun never writes over an existing runs/<run-id>/spec.json: a
new run id's spec is created with an exclusive write (of two controllers racing for it, one wins);
submitting an existing run id again resumes it when the spec is the same (the stored TrainSpec equals
the submitted one) and is refused (ALREADY_EXISTS) when it is not. A run that is still active — this
controller's, or a Job/process its launcher finds — is refused (FAILED_PRECONDITION) before anything is
written. The store and the launcher are asked, not this process's memory, so another replica's runs
and runs from before a restart count too.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from reviewstack.common import errors
from reviewstack.common.grpc import OperationRegistry, ProgressReporter
from reviewstack.common.logging import get_logger
from reviewstack.common.runspec import TrainSpec, validate_train_spec
from reviewstack.common.store import ArtifactStore, open_store
from reviewstack.training.launchers import Launcher, LaunchState
from reviewstack.training.preflight import check_dataset, check_output, local_path_of
from reviewstack.training.settings import LauncherSettings
from reviewstack.training.specs import Resources, spec_json, spec_to_pb
from reviewstack.training.status import JobStatus, published_artifacts, read_status, run_prefix, spec_key
from reviewstack.training.views import SUBMIT_KIND, run_stage, stored_run, synthetic_operation
from reviewstack.v1 import operations_pb2, training_pb2

log = get_logger(__name__)
_KEEP_FINISHED = 1000  # finished runs (and operations) answered from memory; older runs: from the store


class RunOperations(OperationRegistry):
    """The operation registry, with a hook that runs first when the server shuts down."""

    def __init__(self, max_workers: int, keep_finished: int = 1000, max_pending: int = 16) -> None:
        super().__init__(max_workers=max_workers, keep_finished=keep_finished, max_pending=max_pending)
        self.on_shutdown: Callable[[], None] | None = None

    def shutdown(self, cancel_running: bool = True) -> None:
        if self.on_shutdown is not None:
            self.on_shutdown()
        super().shutdown(cancel_running)


@dataclass
class _Run:
    """A run this controller started; mutable fields are guarded by the controller's lock."""

    spec: TrainSpec
    resources: Resources
    spec_uri: str
    run_uri: str
    store: ArtifactStore
    created: float = field(default_factory=time.time)
    operation_id: str = ""
    status: JobStatus = field(default_factory=JobStatus)
    launch: LaunchState | None = None
    artifacts: dict[str, str] = field(default_factory=dict)


class TrainingController:
    """Submit, get, list, cancel and watch runs over one launcher (see the module docstring)."""

    def __init__(
        self, settings: LauncherSettings, launcher: Launcher, operations: RunOperations | None = None
    ) -> None:
        self.settings = settings
        self.launcher = launcher
        workers = settings.max_concurrent_runs or (64 if launcher.name == "kubernetes" else 1)
        # runs waiting for a worker are bounded: the server's settings say how many (the CLI's have none)
        pending = getattr(settings, "max_pending_operations", 16)
        self.operations = operations or RunOperations(workers, _KEEP_FINISHED, pending)
        self.operations.on_shutdown = self._on_shutdown
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()  # one submission at a time: run ids and request ids stay unique
        self._runs: dict[str, _Run] = {}
        self._detached = False

    # ---- submit ---------------------------------------------------------------------------------------
    def find_request(self, request_id: str) -> training_pb2.Run | None:
        """The run a client's request id already started (a retried SubmitRun), if any: the operation
        registry knows the request ids, each run its operation."""
        operation = self.operations.find(SUBMIT_KIND, request_id)
        if operation is None:
            return None
        with self._lock:
            run = next((r for r in self._runs.values() if r.operation_id == operation.id), None)
        return self._to_pb(run) if run is not None else None

    def submit(
        self, spec: TrainSpec, gpus: int | None = None, nodes: int | None = None, request_id: str = ""
    ) -> training_pb2.Run:
        """Check everything, write runs/<id>/spec.json, and start following the launched run."""
        with self._submit_lock:
            if (existing := self.find_request(request_id)) is not None:
                return existing
            resources = Resources(
                gpus_per_node=self.launcher.default_gpus(spec) if gpus is None else gpus,
                nodes=1 if nodes is None else nodes,
            )
            self.launcher.check(spec, resources)
            check_dataset(spec.dataset, self.settings)
            check_output(spec.output, self.settings)
            store = open_store(spec.output, self.settings)
            key = spec_key(spec.run_id)
            stored = refuse_other_spec(store, spec)
            try:
                self._refuse_active(spec.run_id)
            except errors.FailedPrecondition:
                if stored is None:  # another controller may have created it since: its spec decides
                    refuse_other_spec(store, spec)
                raise
            if stored is None:
                create_spec(store, spec)
            path = local_path_of(spec.output)
            # the job reads plain paths for local stores (a file:// URI would need quoting rules)
            spec_uri = str(path / key) if path is not None else store.uri_for(key)
            run = _Run(
                spec=spec,
                resources=resources,
                spec_uri=spec_uri,
                run_uri=store.uri_for(run_prefix(spec.run_id)),
                store=store,
            )
            try:
                operation = self.operations.start(SUBMIT_KIND, lambda r: self._follow(run, r), request_id)
            except errors.ReviewStackError:  # e.g. too many runs waiting: refused, so nothing is kept
                if stored is None:
                    _forget_spec(store, key)
                raise
            with self._lock:
                run.operation_id = operation.id
                self._runs[spec.run_id] = run
            self._forget_finished()
            log.info(
                "run accepted", run_id=spec.run_id, launcher=self.launcher.name, gpus=resources.gpus_per_node
            )
            return self._to_pb(run)

    def _refuse_active(self, run_id: str) -> None:
        """FAILED_PRECONDITION when the run is active: queued or followed here, or found by the launcher
        (a Job on the cluster, a process on this machine), whoever started it."""
        with self._lock:
            current = self._runs.get(run_id)
        if current is not None and not self._finished(current):
            raise errors.FailedPrecondition(
                f"run {run_id} is already running (operation {current.operation_id}); "
                "cancel it first, or submit under another run_id"
            )
        try:
            state = self.launcher.poll(run_id)
        except errors.Unavailable as exc:
            # Nothing can start while the launcher is unreachable, and its launch refuses an active run
            # by itself (a Job's name is unique); the store check above keeps every written spec safe.
            log.warning("cannot ask the launcher whether the run is active", run_id=run_id, error=str(exc))
            return
        if state is not None and not state.terminal:
            where = self.launcher.log_location(run_id)
            raise errors.FailedPrecondition(
                f"run {run_id} is already {state.phase} under the {self.launcher.name} launcher "
                f"({state.message or 'no detail'}; log: {where}), started by this or another controller; "
                "cancel it first, or submit under another run_id"
            )

    def _forget_finished(self) -> None:
        """Bound the memory of a long-lived server: a finished run is forgotten with its operation (the
        registry keeps the newest _KEEP_FINISHED finished ones), so a retried request id finds its run
        whenever it finds its operation; GetRun and ListRuns read forgotten runs from the store."""
        kept = {operation.id for operation in self.operations.list(SUBMIT_KIND)}
        with self._lock:
            runs = [r for r in self._runs.values() if r.operation_id not in kept]
        for run in runs:
            if not self._finished(run):
                continue
            with self._lock:
                if self._runs.get(run.spec.run_id) is run:
                    del self._runs[run.spec.run_id]

    # ---- following a run (operation worker thread) ----------------------------------------------------
    def _follow(self, run: _Run, reporter: ProgressReporter) -> training_pb2.Run:
        run_id = run.spec.run_id
        reporter.update(stage="launching", message=f"{self.launcher.name}: {run.spec_uri}")
        self.launcher.launch(run.spec, run.spec_uri, run.resources)
        seen: tuple[object, ...] = ()
        while True:
            if reporter.cancelled():
                return self._stop(run, reporter)
            try:
                state = self.launcher.poll(run_id) or LaunchState(
                    "failed",
                    f"the {self.launcher.name} launcher lost the run (deleted outside the controller?)",
                )
            except errors.Unavailable as exc:  # a blip of the API: keep following
                reporter.update(message=str(exc))
                self._sleep(reporter)
                continue
            status = read_status(run.store, run_id)
            key = (state, status)
            if key != seen:
                seen = key
                artifacts = published_artifacts(run.store, run_id)
                with self._lock:
                    run.launch, run.status, run.artifacts = state, status, artifacts
                reporter.update(
                    stage=run_stage(state, status),
                    done=status.step,
                    total=status.total_steps,
                    message=status.describe() or state.message,
                )
            if state.terminal:
                return self._finish(run, state, status)
            self._sleep(reporter)

    def _sleep(self, reporter: ProgressReporter) -> None:
        """Wait one poll interval, waking early when a cancel arrives."""
        deadline = time.monotonic() + self.settings.poll_interval_s
        while not reporter.cancelled() and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))

    def _stop(self, run: _Run, reporter: ProgressReporter) -> training_pb2.Run:
        run_id = run.spec.run_id
        if self._detached:
            raise errors.Unavailable(
                f"the controller stopped; run {run_id} keeps running ({self.launcher.log_location(run_id)})"
            )
        reporter.update(message="cancelling")
        self.launcher.cancel(run_id)
        state = self.launcher.poll(run_id) or LaunchState("cancelled", "cancelled")
        with self._lock:
            run.launch = LaunchState("cancelled", state.message, state.attempts, state.exit_code)
            run.status = read_status(run.store, run_id)
        raise errors.Cancelled(
            f"run {run_id} was cancelled at a client's request; its checkpoints are kept in {run.run_uri} "
            "and submitting the same run_id resumes it"
        )

    def _finish(self, run: _Run, state: LaunchState, status: JobStatus) -> training_pb2.Run:
        run_id = run.spec.run_id
        if state.phase == "succeeded":
            return self._to_pb(run, with_operation=False)
        detail = f": {status.message}" if status.message else ""
        where = self.launcher.log_location(run_id)
        if state.phase == "cancelled":
            raise errors.Cancelled(f"run {run_id} was stopped{detail}")
        if state.bad_input:
            why = f"the training job refused its spec or input{detail}" if status.message else state.message
            raise errors.InvalidArgument(f"run {run_id}: {why}; fix the spec and submit again (log: {where})")
        raise errors.ReviewStackError(
            f"run {run_id} failed: {state.message}{detail}; log: {where}. Submitting the same run_id "
            "resumes from its latest checkpoint"
        )

    def _on_shutdown(self) -> None:
        """Called before the registry cancels everything: cluster runs are detached, not cancelled."""
        self._detached = self.launcher.name == "kubernetes"

    def _finished(self, run: _Run) -> bool:
        try:
            return self.operations.get(run.operation_id).state not in (
                operations_pb2.OPERATION_STATE_PENDING,
                operations_pb2.OPERATION_STATE_RUNNING,
            )
        except errors.NotFound:
            return True

    # ---- reading ----------------------------------------------------------------------------------------
    def get(self, run_id: str) -> training_pb2.Run:
        with self._lock:
            run = self._runs.get(run_id)
        if run is not None:
            return self._to_pb(run)
        return self._external(run_id)

    def list(self) -> list[training_pb2.Run]:
        """This controller's runs, newest first, then runs found in its store's runs/ folder."""
        with self._lock:
            mine = sorted(self._runs.values(), key=lambda r: r.created, reverse=True)
        runs = [self._to_pb(r) for r in mine]
        known = {r.spec.run_id for r in mine}
        store = open_store(self.settings.store, self.settings)
        try:
            prefixes = store.list_dirs("runs")
        except errors.ReviewStackError as exc:  # the store is unreachable: still answer for our own runs
            log.warning("cannot list the store's runs", store=self.settings.store, error=str(exc))
            prefixes = []
        others = []
        for prefix in prefixes:
            run_id = prefix.rsplit("/", 1)[-1]
            if run_id not in known:
                try:
                    others.append(self._external(run_id, store))
                except errors.NotFound:
                    continue
        others.sort(key=lambda r: r.operation.update_time.ToNanoseconds(), reverse=True)
        return runs + others

    def cancel(self, run_id: str) -> training_pb2.Run:
        """Ask a run to stop: a queued one stops at once, a running one within a poll interval."""
        with self._lock:
            run = self._runs.get(run_id)
        if run is not None:
            self.operations.cancel(run.operation_id)
            return self._to_pb(run)
        state = self.launcher.poll(run_id)
        if state is None or state.terminal:
            raise errors.FailedPrecondition(
                f"run {run_id} is not running under this controller's launcher; nothing to cancel"
            )
        self.launcher.cancel(run_id)
        return self._external(run_id)

    async def watch(self, run_id: str) -> AsyncIterator[training_pb2.Run]:
        """The run now and at every change, until it finishes."""
        with self._lock:
            run = self._runs.get(run_id)
        if run is not None:
            async for _ in self.operations.watch(run.operation_id):
                yield self._to_pb(run)
            return
        last = None
        while True:  # not ours: poll the store (and the launcher) until it ends
            current = await asyncio.to_thread(self._external, run_id)
            if current != last:
                last = current
                yield current
            if current.operation.state in (
                operations_pb2.OPERATION_STATE_SUCCEEDED,
                operations_pb2.OPERATION_STATE_FAILED,
                operations_pb2.OPERATION_STATE_CANCELLED,
            ):
                return
            await asyncio.sleep(self.settings.poll_interval_s)

    def _to_pb(self, run: _Run, *, with_operation: bool = True) -> training_pb2.Run:
        with self._lock:
            status, artifacts, launch = run.status, dict(run.artifacts), run.launch
        pb = training_pb2.Run(
            run_id=run.spec.run_id,
            spec=spec_to_pb(run.spec, run.resources),
            metrics=status.all_metrics(),
            uri=run.run_uri,
            log=self.launcher.log_location(run.spec.run_id),
            artifacts=artifacts,
            attempts=launch.attempts if launch else 0,
        )
        if with_operation and run.operation_id:
            try:
                pb.operation.CopyFrom(self.operations.get(run.operation_id))
            except errors.NotFound:  # forgotten by the registry (long finished): describe it from state
                pb.operation.CopyFrom(synthetic_operation(run.spec.run_id, launch, status))
        return pb

    def _external(self, run_id: str, store: ArtifactStore | None = None) -> training_pb2.Run:
        """A run found in the store (and on Kubernetes, its Job) that this controller does not follow."""
        store = store or open_store(self.settings.store, self.settings)
        try:
            launch = self.launcher.poll(run_id)
        except errors.ReviewStackError:  # e.g. no cluster to ask: the store still knows the run
            launch = None
        log_location = self.launcher.log_location(run_id) if launch is not None else ""
        return stored_run(store, run_id, launch, log_location)


# ---- one spec per run id (also for `reviewstack train render-job --upload`) --------------------------------
def refuse_other_spec(store: ArtifactStore, spec: TrainSpec) -> TrainSpec | None:
    """The run's stored spec (None for a new run id); ALREADY_EXISTS when it is not `spec`, whatever
    the run's state: cancelling it would not make the run id name another spec."""
    stored = stored_spec(store, spec.run_id)
    if stored is not None and stored != spec:
        raise _different_spec(store, spec.run_id, stored, spec)
    return stored


def stored_spec(store: ArtifactStore, run_id: str) -> TrainSpec | None:
    """The spec an existing run was submitted with; None for a new run id; ALREADY_EXISTS when what is
    there cannot be read as a spec (it is never replaced either)."""
    try:
        data = store.get_bytes(spec_key(run_id))
    except errors.NotFound:
        return None
    except errors.FailedPrecondition as exc:  # corrupt: it does not match its recorded hash
        raise _unreadable_spec(store, run_id, str(exc)) from None
    try:
        return validate_train_spec(json.loads(data))
    except (ValueError, errors.InvalidArgument) as exc:
        raise _unreadable_spec(store, run_id, str(exc)) from None


def create_spec(store: ArtifactStore, spec: TrainSpec) -> None:
    """Write a new run's spec.json, atomically and only if none exists: of two writers of the same new
    run id, one wins; the other gets ALREADY_EXISTS (another spec) or FAILED_PRECONDITION (this one)."""
    try:
        store.put_bytes(spec_key(spec.run_id), spec_json(spec), exclusive=True)
        return
    except errors.AlreadyExists:
        pass  # another controller created it since we looked
    refuse_other_spec(store, spec)
    raise errors.FailedPrecondition(
        f"run {spec.run_id} was submitted by another controller at the same moment, with this same "
        "spec; follow it with GetRun/WatchRun instead of submitting it again"
    )


def _different_spec(
    store: ArtifactStore, run_id: str, stored: TrainSpec, submitted: TrainSpec
) -> errors.AlreadyExists:
    """ALREADY_EXISTS for a run id that names another spec, listing what differs."""
    old, new = stored.model_dump(mode="json"), submitted.model_dump(mode="json")
    changed = [
        f"{k}: {old.get(k)!r} stored, {new.get(k)!r} submitted" for k in sorted(old) if old[k] != new.get(k)
    ]
    more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
    return errors.AlreadyExists(
        f"run {run_id} already exists ({store.uri_for(spec_key(run_id))}) with another spec — "
        f"{'; '.join(changed[:5])}{more}. A run id names one spec: submit this one under another run_id, "
        "or submit the stored spec unchanged to resume the run"
    )


def _unreadable_spec(store: ArtifactStore, run_id: str, why: str) -> errors.AlreadyExists:
    """ALREADY_EXISTS for a run id whose stored spec cannot be compared (so never replaced)."""
    return errors.AlreadyExists(
        f"run {run_id} already exists, but its {store.uri_for(spec_key(run_id))} cannot be read as a spec "
        f"({why}); it is left as it is: submit under another run_id"
    )


def _forget_spec(store: ArtifactStore, key: str) -> None:
    """Delete the spec of a submission refused after it was written; the refusal is what the caller
    must see, so a failure here is only logged."""
    try:
        store.delete(key)
    except errors.ReviewStackError as exc:
        log.warning("cannot delete the spec of a refused submission", key=key, error=str(exc))
