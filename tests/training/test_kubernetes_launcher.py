"""The kubernetes launcher's API calls, against FakeCluster (kube_fake.py) — a stand-in for the API
server, since none can run here. Only the launcher's own logic is under test: it creates the rendered
Job, gives the rendezvous Service the Job as owner, replaces a finished Job of a resubmitted run (never
an active one), cancels by deleting, and turns API failures into errors that say what to fix. The
objects themselves are validated for real in test_manifests.py.
"""

from __future__ import annotations

import pytest
from kubernetes import client as k8s

from reviewstack.common.errors import FailedPrecondition, PermissionDenied
from reviewstack.common.runspec import validate_train_spec
from reviewstack.training.launchers import kubernetes as launcher_module
from reviewstack.training.manifests import render_run
from reviewstack.training.specs import Resources

from .conftest import spec_data
from .kube_fake import FakeCluster, launcher_on

SPEC_URI = "s3://b/runs/big/spec.json"


@pytest.fixture
def cluster(monkeypatch) -> FakeCluster:
    monkeypatch.setattr(launcher_module, "_RETRY_S", 0.0)
    return FakeCluster()


def test_a_run_is_created_followed_resubmitted_and_cancelled(cluster):
    launcher = launcher_on(cluster)
    spec = validate_train_spec(spec_data("s3://b/datasets/x/v1", "s3://b", run_id="big"))
    launcher.launch(spec, SPEC_URI, Resources(4, 2))
    job, service = render_run("big", SPEC_URI, launcher.template, Resources(4, 2))
    assert cluster.bodies[("job", "ml", "big")] == job  # exactly what render_run (and so the validator) saw
    assert cluster.bodies[("service", "ml", "rdzv-big")]["spec"] == service["spec"]
    owner = cluster.service("rdzv-big").metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid) == ("Job", "big", cluster.job("big").metadata.uid)
    assert launcher.poll("big").phase == "pending"
    cluster.set_job_status("big", k8s.V1JobStatus(active=2, ready=2))
    assert launcher.poll("big").phase == "running"

    with pytest.raises(FailedPrecondition, match="Job big of this run is still active in namespace ml"):
        launcher.launch(spec, SPEC_URI, Resources(4, 2))
    assert not [c for c in cluster.calls if c.startswith("delete")]

    complete = k8s.V1JobCondition(type="Complete", status="True")
    cluster.set_job_status("big", k8s.V1JobStatus(succeeded=2, conditions=[complete]))
    assert launcher.poll("big").phase == "succeeded"
    first_uid = cluster.job("big").metadata.uid
    launcher.launch(spec, SPEC_URI, Resources(4, 2))  # resubmitted: the finished Job is replaced
    assert "delete job big with preconditions" in cluster.calls
    assert cluster.job("big").metadata.uid != first_uid
    new_owner = cluster.service("rdzv-big").metadata.owner_references[0].uid
    assert new_owner == cluster.job("big").metadata.uid  # the earlier Service was replaced

    launcher.cancel("big")
    assert launcher.poll("big") is None
    launcher.cancel("big")  # cancelling twice is not an error


def test_api_failures_say_what_to_fix(cluster):
    launcher = launcher_on(cluster)
    cluster.fail_with = 403
    spec = validate_train_spec(spec_data("s3://b/datasets/x/v1", "s3://b", run_id="denied"))
    with pytest.raises(PermissionDenied, match="service account needs get/create/delete on jobs"):
        launcher.launch(spec, SPEC_URI, Resources(1))
    assert launcher.log_location("denied") == (
        "kubectl logs -n ml -f --prefix --max-log-requests=16 -l batch.kubernetes.io/job-name=denied"
    )
