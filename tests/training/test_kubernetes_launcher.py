"""The kubernetes launcher's API calls, against FakeCluster — a stand-in for the API server, since none
can run here. Only the launcher's own logic is under test: it creates the rendered Job, gives the
rendezvous Service the Job as owner, replaces a finished Job of a resubmitted run (never an active
one), cancels by deleting, and turns API failures into errors that say what to fix. The objects
themselves are validated for real in test_manifests.py.
"""

from __future__ import annotations

import uuid

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from reviewstack.common.errors import FailedPrecondition, PermissionDenied
from reviewstack.training.launchers import kubernetes as launcher_module
from reviewstack.training.launchers.kubernetes import KubernetesLauncher
from reviewstack.training.manifests import render_run
from reviewstack.training.settings import LauncherSettings
from reviewstack.training.specs import Resources, validate_spec

from .conftest import spec_data

SPEC_URI = "s3://b/runs/big/spec.json"


class FakeCluster:
    """BatchV1Api + CoreV1Api, the five calls the launcher makes, over two dicts."""

    def __init__(self) -> None:
        self.jobs: dict[str, k8s.V1Job] = {}
        self.bodies: dict[str, dict] = {}
        self.services: dict[str, dict] = {}
        self.calls: list[str] = []
        self.fail_with: int | None = None

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.fail_with:
            raise ApiException(status=self.fail_with, reason="Forbidden")

    def create_namespaced_job(self, namespace: str, body: dict) -> k8s.V1Job:
        self._check(f"create job {body['metadata']['name']}")
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        job = k8s.V1Job(
            metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, uid=str(uuid.uuid4())),
            spec=k8s.V1JobSpec(parallelism=body["spec"]["parallelism"], template=k8s.V1PodTemplateSpec()),
            status=k8s.V1JobStatus(),
        )
        self.jobs[name], self.bodies[name] = job, body
        return job

    def read_namespaced_job(self, name: str, namespace: str) -> k8s.V1Job:
        self._check(f"read job {name}")
        if name not in self.jobs:
            raise ApiException(status=404, reason="NotFound")
        return self.jobs[name]

    def delete_namespaced_job(self, name: str, namespace: str, propagation_policy: str = "") -> None:
        self._check(f"delete job {name} {propagation_policy}")
        if self.jobs.pop(name, None) is None:
            raise ApiException(status=404, reason="NotFound")

    def create_namespaced_service(self, namespace: str, body: dict) -> None:
        self._check(f"create service {body['metadata']['name']}")
        if body["metadata"]["name"] in self.services:
            raise ApiException(status=409, reason="AlreadyExists")
        self.services[body["metadata"]["name"]] = body

    def delete_namespaced_service(self, name: str, namespace: str) -> None:
        self._check(f"delete service {name}")
        self.services.pop(name)


@pytest.fixture
def cluster(monkeypatch) -> FakeCluster:
    monkeypatch.setattr(launcher_module, "_RETRY_S", 0.0)
    return FakeCluster()


def _launcher(cluster: FakeCluster) -> KubernetesLauncher:
    settings = LauncherSettings(launcher="kubernetes", k8s_namespace="ml", s3_endpoint="minio:9000")
    return KubernetesLauncher(settings, batch=cluster, core=cluster)


def test_a_run_is_created_followed_resubmitted_and_cancelled(cluster):
    launcher = _launcher(cluster)
    spec = validate_spec(spec_data("s3://b/datasets/x/v1", "s3://b", run_id="big"))
    launcher.launch(spec, SPEC_URI, Resources(4, 2))
    job, service = render_run("big", SPEC_URI, launcher.template, Resources(4, 2))
    assert cluster.bodies["big"] == job  # exactly what render_run (and so the validator) saw
    assert cluster.services["rdzv-big"]["spec"] == service["spec"]
    owner = cluster.services["rdzv-big"]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Job", "big", cluster.jobs["big"].metadata.uid)
    assert launcher.poll("big").phase == "pending"
    cluster.jobs["big"].status = k8s.V1JobStatus(active=2, ready=2)
    assert launcher.poll("big").phase == "running"

    with pytest.raises(FailedPrecondition, match="Job big of this run is still active in namespace ml"):
        launcher.launch(spec, SPEC_URI, Resources(4, 2))
    assert "delete job big Background" not in cluster.calls

    cluster.jobs["big"].status = k8s.V1JobStatus(
        succeeded=2, conditions=[k8s.V1JobCondition(type="Complete", status="True")]
    )
    assert launcher.poll("big").phase == "succeeded"
    first_uid = cluster.jobs["big"].metadata.uid
    launcher.launch(spec, SPEC_URI, Resources(4, 2))  # resubmitted: the finished Job is replaced
    assert "delete job big Background" in cluster.calls
    assert cluster.jobs["big"].metadata.uid != first_uid
    new_owner = cluster.services["rdzv-big"]["metadata"]["ownerReferences"][0]["uid"]
    assert new_owner == cluster.jobs["big"].metadata.uid  # the earlier Service was replaced

    launcher.cancel("big")
    assert launcher.poll("big") is None
    launcher.cancel("big")  # cancelling twice is not an error


def test_api_failures_say_what_to_fix(cluster):
    launcher = _launcher(cluster)
    cluster.fail_with = 403
    spec = validate_spec(spec_data("s3://b/datasets/x/v1", "s3://b", run_id="denied"))
    with pytest.raises(PermissionDenied, match="service account needs get/create/delete on jobs"):
        launcher.launch(spec, SPEC_URI, Resources(1))
    assert launcher.log_location("denied") == (
        "kubectl logs -n ml -f --prefix --max-log-requests=16 -l batch.kubernetes.io/job-name=denied"
    )
