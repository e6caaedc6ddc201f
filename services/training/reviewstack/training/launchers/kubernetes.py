"""The cluster launcher: a run is a batch/v1 Job (manifests.render_run) created through the official
`kubernetes` client, in-cluster with the pod's service account or else from ~/.kube/config.

The Job does its own retries (backoffLimit, podFailurePolicy), so this launcher only creates, reads
and deletes it. The controller's service account needs get/create/delete on jobs (batch) and services
in its namespace. Re-submitting a finished run replaces its old Job; the run itself resumes from its
checkpoints in the store.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from reviewstack.common import errors
from reviewstack.common.logging import get_logger
from reviewstack.common.runspec import TrainSpec
from reviewstack.training.launchers import LaunchState
from reviewstack.training.manifests import JOB_NAME_LABEL, JobTemplate, job_name, render_run
from reviewstack.training.preflight import check_cluster_run
from reviewstack.training.settings import LauncherSettings
from reviewstack.training.specs import Resources

log = get_logger(__name__)
_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_DELETE_WAIT_S = 60.0
_RETRY_S = 1.0  # between reads while Kubernetes deletes an old Job or Service


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
        check_cluster_run(spec, resources.gpus_per_node)

    def log_location(self, run_id: str) -> str:
        return (
            f"kubectl logs -n {self.namespace} -f --prefix --max-log-requests=16 "
            f"-l {JOB_NAME_LABEL}={job_name(run_id)}"
        )

    def launch(self, spec: TrainSpec, spec_uri: str, resources: Resources) -> None:
        batch, _ = self._apis()
        docs = render_run(spec.run_id, spec_uri, self.template, resources)
        job, service = docs[0], (docs[1] if len(docs) > 1 else None)
        name = job["metadata"]["name"]
        try:
            created = batch.create_namespaced_job(self.namespace, job)
        except Exception as exc:
            if _status(exc) != 409:
                raise _api_error(exc, f"create Job {name}") from None
            self._replace_finished(name)
            created = _call(lambda: batch.create_namespaced_job(self.namespace, job), f"create Job {name}")
        if service is not None:
            # owned by the Job: deleting the Job (cancel, TTL) deletes its Service too
            service["metadata"]["ownerReferences"] = [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": name,
                    "uid": created.metadata.uid,
                    "controller": True,
                }
            ]
            self._create_service(service)
        log.info("job created", run_id=spec.run_id, job=name, namespace=self.namespace, nodes=resources.nodes)

    def _create_service(self, service: dict[str, Any]) -> None:
        """Create the rendezvous Service, replacing one left by an earlier Job of the same run (its
        garbage collection may be racing us, hence the retries)."""
        _, core = self._apis()
        name = service["metadata"]["name"]
        for _attempt in range(10):
            try:
                core.create_namespaced_service(self.namespace, service)
                return
            except Exception as exc:
                if _status(exc) != 409:
                    raise _api_error(exc, f"create Service {name}") from None
            try:
                core.delete_namespaced_service(name, self.namespace)
            except Exception as exc:
                if _status(exc) != 404:
                    raise _api_error(exc, f"replace Service {name}") from None
            time.sleep(_RETRY_S)
        raise errors.Unavailable(f"Service {name} of an earlier run is still being deleted; submit again")

    def _replace_finished(self, name: str) -> None:
        """A Job of this name exists: delete it if it has finished (a resubmitted run), else refuse."""
        batch, _ = self._apis()
        existing = _call(lambda: batch.read_namespaced_job(name, self.namespace), f"read Job {name}")
        if not job_state(existing).terminal:
            raise errors.FailedPrecondition(
                f"Job {name} of this run is still active in namespace {self.namespace}; cancel it first"
            )
        _call(
            lambda: batch.delete_namespaced_job(name, self.namespace, propagation_policy="Background"),
            f"delete the finished Job {name}",
        )
        deadline = time.monotonic() + _DELETE_WAIT_S
        while time.monotonic() < deadline:
            try:
                batch.read_namespaced_job(name, self.namespace)
            except Exception as exc:
                if _status(exc) == 404:
                    return
                raise _api_error(exc, f"read Job {name}") from None
            time.sleep(_RETRY_S)
        raise errors.Unavailable(f"the finished Job {name} is still being deleted; submit again in a minute")

    def poll(self, run_id: str) -> LaunchState | None:
        batch, _ = self._apis()
        name = job_name(run_id)
        try:
            job = batch.read_namespaced_job(name, self.namespace)
        except Exception as exc:
            if _status(exc) == 404:
                return None
            raise _api_error(exc, f"read Job {name}") from None
        return job_state(job)

    def cancel(self, run_id: str) -> None:
        """Delete the Job: its pods get SIGTERM and the termination grace to save a checkpoint."""
        batch, _ = self._apis()
        name = job_name(run_id)
        try:
            batch.delete_namespaced_job(name, self.namespace, propagation_policy="Background")
        except Exception as exc:
            if _status(exc) != 404:
                raise _api_error(exc, f"delete Job {name}") from None


def _own_namespace() -> str:
    try:
        return _NAMESPACE_FILE.read_text().strip()
    except OSError:
        return ""


def _status(exc: Exception) -> int | None:
    return getattr(exc, "status", None)


def _call(fn: Any, what: str) -> Any:
    try:
        return fn()
    except Exception as exc:
        raise _api_error(exc, what) from None


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
