"""The cluster launcher: a run is a batch/v1 Job (manifests.render_run) created through the official
`kubernetes` client, in-cluster with the pod's service account or else from ~/.kube/config.

The Job does its own retries (backoffLimit, podFailurePolicy), so this launcher only creates, reads
and deletes it. The controller's service account needs get/create/delete on jobs (batch) and services
in its namespace. Re-submitting a finished run replaces its old Job; the run itself resumes from its
checkpoints in the store.

It deletes only what it made: a Job or Service is read first and deleted only when its labels name
this controller (managed-by), review-stack's training job (name, component) and this run (run-id),
with uid and resourceVersion preconditions so an object replaced in between is left alone. Anything
else under the name a run needs is refused (FAILED_PRECONDITION) with what to do.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from reviewstack.common import errors
from reviewstack.common.logging import get_logger
from reviewstack.common.runspec import TrainSpec
from reviewstack.training.launchers import LaunchState
from reviewstack.training.manifests import (
    APP_LABELS,
    JOB_NAME_LABEL,
    RUN_LABEL,
    JobTemplate,
    job_name,
    render_run,
    run_labels,
)
from reviewstack.training.preflight import check_cluster_run
from reviewstack.training.settings import LauncherSettings
from reviewstack.training.specs import Resources

log = get_logger(__name__)
_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_DELETE_WAIT_S = 60.0
_RETRY_S = 1.0  # between reads while Kubernetes deletes an old Job or Service
_TRIES = 5  # reads and deletes of a Job that changes under us (status updates, another controller)


def job_state(job: Any) -> LaunchState:
    """A Job's status as a LaunchState (pure: the tests feed it client model objects)."""
    status = job.status
    conditions = {c.type: c for c in (status.conditions or []) if c.status == "True"} if status else {}
    failed = (status.failed or 0) if status else 0
    nodes = max((job.spec.parallelism or 1) if job.spec else 1, 1)
    attempts = 1 + failed // nodes  # one crash of a multi-node run fails every node's pod
    if "Complete" in conditions or "SuccessCriteriaMet" in conditions:
        return LaunchState("succeeded", "", max(attempts, 1), 0)
    if "Failed" in conditions or "FailureTarget" in conditions:
        cond = conditions.get("Failed") or conditions["FailureTarget"]
        reason = cond.reason or ""
        if reason == "PodFailurePolicy":  # our only FailJob rule: exit status 2
            return LaunchState(
                "failed",
                f"the training job refused its spec or input (exit status 2): {cond.message or ''}".strip(),
                attempts,
                2,
                True,
            )
        if reason == "BackoffLimitExceeded":
            return LaunchState("failed", f"crashed {failed} times; the Job gave up (backoffLimit)", attempts)
        return LaunchState("failed", f"{reason}: {cond.message or ''}".strip(": "), attempts)
    if "Suspended" in conditions:
        return LaunchState("pending", "the Job is suspended", attempts)
    if (status.active or 0) if status else 0:
        ready = (status.ready or 0) if status else 0
        note = f"restarted after {failed} failed pod(s)" if failed else ""
        return LaunchState("running", note or f"{ready} pod(s) ready", attempts)
    return LaunchState("pending", "waiting for pods to be scheduled", attempts)


class KubernetesLauncher:
    """Creates and follows one Job per run (see the module docstring)."""

    name = "kubernetes"

    def __init__(self, settings: LauncherSettings, *, batch: Any = None, core: Any = None) -> None:
        self.settings = settings
        namespace = settings.k8s_namespace or _own_namespace() or "default"
        self.template = JobTemplate.from_settings(settings, namespace)
        self._batch, self._core = batch, core  # injected clients are for tests; else made on first use

    @property
    def namespace(self) -> str:
        return self.template.namespace

    def _apis(self) -> tuple[Any, Any]:
        if self._batch is None or self._core is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                try:
                    config.load_kube_config()
                except (config.ConfigException, OSError) as exc:
                    raise errors.Unavailable(
                        "no Kubernetes API to talk to: not running in a pod, and no usable kubeconfig "
                        f"(KUBECONFIG or ~/.kube/config: {exc}); set REVIEWSTACK_LAUNCHER=local to run "
                        "on this machine"
                    ) from None
            self._batch, self._core = client.BatchV1Api(), client.CoreV1Api()
        return self._batch, self._core

    def default_gpus(self, spec: TrainSpec) -> int:
        return 0 if spec.device == "cpu" else self.settings.k8s_gpus_per_node

    def check(self, spec: TrainSpec, resources: Resources) -> None:
        check_cluster_run(spec, resources.gpus_per_node, resources.nodes)

    def log_location(self, run_id: str) -> str:
        return (
            f"kubectl logs -n {self.namespace} -f --prefix --max-log-requests=16 "
            f"-l {JOB_NAME_LABEL}={job_name(run_id)}"
        )

    def launch(self, spec: TrainSpec, spec_uri: str, resources: Resources) -> None:
        docs = render_run(spec.run_id, spec_uri, self.template, resources)
        job, service = docs[0], (docs[1] if len(docs) > 1 else None)
        created = self._create_job(spec.run_id, job)
        if service is not None:
            # owned by the Job: deleting the Job (cancel, TTL) deletes its Service too
            service["metadata"]["ownerReferences"] = [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": created.metadata.name,
                    "uid": created.metadata.uid,
                    "controller": True,
                }
            ]
            try:
                self._create_service(spec.run_id, service)
            except errors.ReviewStackError:
                self._take_back(created)
                raise
        log.info(
            "job created",
            run_id=spec.run_id,
            job=job_name(spec.run_id),
            namespace=self.namespace,
            nodes=resources.nodes,
        )

    def _create_job(self, run_id: str, body: dict[str, Any]) -> Any:
        """Create the run's Job; a finished Job of the same run (a resubmission) is replaced, an active
        one refused. Kubernetes' unique names make this the arbiter between two controllers: only one
        create wins, and the delete preconditions never remove a Job another controller just made."""
        batch, _ = self._apis()
        name = body["metadata"]["name"]
        for _attempt in range(_TRIES):
            try:
                return batch.create_namespaced_job(self.namespace, body)
            except Exception as exc:
                if _status(exc) != 409:
                    raise _api_error(exc, f"create Job {name}") from None
            existing = self._read("Job", name, batch.read_namespaced_job)
            if existing is None:
                continue  # deleted since our create: try again
            self._check_deletable("Job", existing, run_id)
            if not job_state(existing).terminal:
                raise errors.FailedPrecondition(
                    f"Job {name} of this run is still active in namespace {self.namespace} (started by "
                    "this or another controller); cancel it first, or follow it with GetRun/WatchRun"
                )
            if self._delete_exactly("Job", existing, batch.delete_namespaced_job):
                self._wait_gone("Job", existing, batch.read_namespaced_job)
        raise errors.Unavailable(
            f"Job {name} in namespace {self.namespace} kept being replaced while this run was submitted "
            f"(another controller?); see `kubectl get job -n {self.namespace} {name}` and submit again"
        )

    def _take_back(self, job: Any) -> None:
        """Delete the Job just created (by uid: its status may have moved on) when its Service could not
        be made: a multi-node Job without one never rendezvouses. The error that led here is the one
        the caller sees, so a failure of this delete is only logged."""
        batch, _ = self._apis()
        try:
            self._delete_exactly("Job", job, batch.delete_namespaced_job, uid_only=True)
        except errors.ReviewStackError as exc:
            log.warning("cannot delete the Job whose Service failed", job=job.metadata.name, error=str(exc))

    def _create_service(self, run_id: str, service: dict[str, Any]) -> None:
        """Create the rendezvous Service, replacing one left by an earlier Job of the same run (its
        garbage collection may be racing us, hence the retries); one that is not ours is refused."""
        _, core = self._apis()
        name = service["metadata"]["name"]
        for _attempt in range(10):
            try:
                core.create_namespaced_service(self.namespace, service)
                return
            except Exception as exc:
                if _status(exc) != 409:
                    raise _api_error(exc, f"create Service {name}") from None
            existing = self._read("Service", name, core.read_namespaced_service)
            if existing is not None:
                self._check_deletable("Service", existing, run_id)
                self._delete_exactly("Service", existing, core.delete_namespaced_service)
            time.sleep(_RETRY_S)
        raise errors.Unavailable(f"Service {name} of an earlier run is still being deleted; submit again")

    def poll(self, run_id: str) -> LaunchState | None:
        """The state of the run's Job; None when there is none. A Job by that name that is not a
        review-stack training Job of this run is an error, not a state: reporting it would let another
        workload's success or failure pass for this run's, and None would let a submission go on to a
        name it cannot use."""
        batch, _ = self._apis()
        job = self._read("Job", job_name(run_id), batch.read_namespaced_job)
        if job is None:
            return None
        if not is_run_job(job, run_id):
            raise errors.FailedPrecondition(
                f"{self._describe('Job', job)} is not a review-stack training Job of run {run_id} "
                f"(labels {_shown(job.metadata.labels)}) but has the name this run's Job needs; "
                f"delete it if it is a leftover ({self._delete_hint('Job', job)}), or use another run_id"
            )
        return job_state(job)

    def cancel(self, run_id: str) -> None:
        """Delete the Job: its pods get SIGTERM and the termination grace to save a checkpoint. Only a
        Job this controller made for this run is deleted, and only the one just read."""
        batch, _ = self._apis()
        name = job_name(run_id)
        for _attempt in range(_TRIES):
            job = self._read("Job", name, batch.read_namespaced_job)
            if job is None:
                return
            self._check_deletable("Job", job, run_id)
            if self._delete_exactly("Job", job, batch.delete_namespaced_job):
                return
        raise errors.Unavailable(f"Job {name} kept changing while being cancelled; cancel it again")

    # ---- object helpers ---------------------------------------------------------------------------------
    def _read(self, kind: str, name: str, read: Any) -> Any:
        """The object, or None when there is none."""
        try:
            return read(name, self.namespace)
        except Exception as exc:
            if _status(exc) == 404:
                return None
            raise _api_error(exc, f"read {kind} {name}") from None

    def _check_deletable(self, kind: str, obj: Any, run_id: str) -> None:
        """Refuse to touch an object unless its labels say this controller made it for this run."""
        labels = obj.metadata.labels or {}
        wrong = [
            f"{key}={labels.get(key, '<unset>')} (expected {value})"
            for key, value in run_labels(self.template, run_id).items()
            if labels.get(key) != value
        ]
        if wrong:
            raise errors.FailedPrecondition(
                f"{self._describe(kind, obj)} was not made by this controller for run {run_id}: "
                f"{', '.join(wrong)}. The controller deletes only its own objects; delete it yourself if "
                f"it is a leftover ({self._delete_hint(kind, obj)}), or submit under another run_id"
            )

    def _delete_exactly(self, kind: str, obj: Any, delete: Any, *, uid_only: bool = False) -> bool:
        """Delete this very object: preconditions on its uid and resourceVersion make the API refuse
        (409) if it was replaced or changed since it was read. False when it changed or is gone."""
        meta = obj.metadata
        version = None if uid_only else meta.resource_version
        options = k8s.V1DeleteOptions(
            propagation_policy="Background",
            preconditions=k8s.V1Preconditions(uid=meta.uid, resource_version=version),
        )
        try:
            delete(meta.name, self.namespace, body=options)
            return True
        except Exception as exc:
            if _status(exc) in (404, 409):
                return False
            raise _api_error(exc, f"delete {kind} {meta.name}") from None

    def _wait_gone(self, kind: str, obj: Any, read: Any) -> None:
        """Wait until the deleted object is gone (or replaced: the next create then sorts it out)."""
        name, uid = obj.metadata.name, obj.metadata.uid
        deadline = time.monotonic() + _DELETE_WAIT_S
        while time.monotonic() < deadline:
            current = self._read(kind, name, read)
            if current is None or current.metadata.uid != uid:
                return
            time.sleep(_RETRY_S)
        raise errors.Unavailable(
            f"the finished {kind} {name} is still being deleted; submit again in a minute"
        )

    def _describe(self, kind: str, obj: Any) -> str:
        return f"{kind} {obj.metadata.name} in namespace {self.namespace}"

    def _delete_hint(self, kind: str, obj: Any) -> str:
        return f"kubectl delete {kind.lower()} -n {self.namespace} {obj.metadata.name}"


def is_run_job(job: Any, run_id: str) -> bool:
    """Whether a Job is a review-stack training Job of `run_id`: one the controller made (its run-id
    label), or one made from charts/training-job-kubectl (no run-id label: its name is the run id)."""
    labels = job.metadata.labels or {}
    if any(labels.get(key) != value for key, value in APP_LABELS.items()):
        return False
    if RUN_LABEL in labels:
        return labels[RUN_LABEL] == run_id
    return job.metadata.name == run_id


def _shown(labels: dict[str, str] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "none"


def _own_namespace() -> str:
    try:
        return _NAMESPACE_FILE.read_text().strip()
    except OSError:
        return ""


def _status(exc: Exception) -> int | None:
    return getattr(exc, "status", None)


def _api_error(exc: Exception, what: str) -> errors.ReviewStackError:
    """An API failure as an error naming what to fix (RBAC, a bad Job, a missing namespace …)."""
    status = _status(exc)
    reason = getattr(exc, "reason", "") or type(exc).__name__
    body = getattr(exc, "body", "") or str(exc)
    detail = f"cannot {what}: {status or ''} {reason}".replace("  ", " ")
    if status in (401, 403):
        return errors.PermissionDenied(
            f"{detail}; the controller's service account needs get/create/delete on jobs and services"
        )
    if status == 404:
        return errors.NotFound(f"{detail}; does the namespace exist?")
    if status == 409:
        return errors.AlreadyExists(detail)
    if status in (400, 422):
        return errors.InvalidArgument(f"{detail}: {str(body)[:500]}")
    return errors.Unavailable(f"{detail}; is the Kubernetes API reachable?")
