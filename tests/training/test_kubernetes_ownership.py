"""The kubernetes launcher deletes only what it made for the run at hand: a Job or Service is read
first and deleted only when its labels say so, with uid + resourceVersion preconditions so that an
object replaced between the read and the delete survives. Against FakeCluster (kube_fake.py), which
answers 404/409 and keeps labels, uids and resourceVersions the way the API server does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s

from reviewstack.common.errors import FailedPrecondition
from reviewstack.common.runspec import validate_train_spec
from reviewstack.training.launchers import kubernetes as launcher_module
from reviewstack.training.manifests import APP_LABELS, RUN_LABEL, JobTemplate, render_kubectl_job
from reviewstack.training.specs import Resources

from .conftest import spec_data
from .kube_fake import FakeCluster, launcher_on

SPEC_URI = "s3://b/runs/r/spec.json"
OURS = {**APP_LABELS, "app.kubernetes.io/managed-by": "reviewstack-training"}
COMPLETE = k8s.V1JobStatus(succeeded=1, conditions=[k8s.V1JobCondition(type="Complete", status="True")])


class RacyCluster(FakeCluster):
    """A cluster where something else acts right after the launcher's next read of a Job."""

    def __init__(self) -> None:
        super().__init__()
        self.after_read: Callable[[], None] | None = None

    def read_namespaced_job(self, name: str, namespace: str) -> Any:
        job = super().read_namespaced_job(name, namespace)
        if self.after_read is not None:
            action, self.after_read = self.after_read, None
            action()
        return job


@pytest.fixture
def cluster(monkeypatch) -> RacyCluster:
    monkeypatch.setattr(launcher_module, "_RETRY_S", 0.0)
    return RacyCluster()


def _spec(run_id: str = "r"):
    return validate_train_spec(spec_data("s3://b/datasets/x/v1", "s3://b", run_id=run_id))


def _deletes(cluster: FakeCluster) -> list[str]:
    return [c for c in cluster.calls if c.startswith("delete")]


@pytest.mark.parametrize(
    "labels, wrong",
    [
        ({"app": "postgres"}, "app.kubernetes.io/managed-by=<unset>"),
        ({**OURS, RUN_LABEL: "other-run"}, "review-stack/run-id=other-run (expected r)"),
        ({**OURS, "app.kubernetes.io/managed-by": "helm"}, "app.kubernetes.io/managed-by=helm"),
    ],
)
def test_a_job_that_is_not_ours_is_never_deleted(cluster, labels, wrong):
    launcher = launcher_on(cluster)
    planted = cluster.plant("job", "r", labels)
    cluster.set_job_status("r", COMPLETE)
    with pytest.raises(FailedPrecondition) as resubmit:
        launcher.launch(_spec(), SPEC_URI, Resources(1))
    with pytest.raises(FailedPrecondition) as cancel:
        launcher.cancel("r")
    for refusal in (resubmit, cancel):
        message = str(refusal.value)
        assert "Job r in namespace ml was not made by this controller for run r" in message
        assert wrong in message and "kubectl delete job -n ml r" in message and "another run_id" in message
    assert _deletes(cluster) == []
    assert cluster.job("r").metadata.uid == planted.metadata.uid


def test_poll_does_not_report_another_workloads_job_as_the_run(cluster):
    """A Job under the run's name that is not a review-stack training Job of the run is an error naming
    it: its success must not pass for the run's, and None would send a submission into its name."""
    launcher = launcher_on(cluster)
    cluster.plant("job", "r", {"app": "postgres"})
    cluster.set_job_status("r", COMPLETE)
    with pytest.raises(FailedPrecondition, match=r"Job r in namespace ml is not a review-stack training Job"):
        launcher.poll("r")
    cluster.plant("job", "s", {**OURS, RUN_LABEL: "someone-else"})
    with pytest.raises(FailedPrecondition, match="review-stack/run-id=someone-else"):
        launcher.poll("s")


def test_a_kubectl_made_job_of_the_run_is_followed_but_not_deleted(cluster):
    """charts/training-job-kubectl Jobs are named by their run id and carry no run-id label: the
    controller reports their state, and leaves deleting them to whoever made them."""
    launcher = launcher_on(cluster)
    body = render_kubectl_job(JobTemplate(namespace="ml", managed_by="kubectl"), 1, "s3://b/runs")
    body["metadata"]["name"] = "by-hand"
    cluster.create_namespaced_job("ml", body)
    cluster.set_job_status("by-hand", k8s.V1JobStatus(active=1, ready=1))
    assert launcher.poll("by-hand").phase == "running"
    with pytest.raises(
        FailedPrecondition, match=re.escape("managed-by=kubectl (expected reviewstack-training)")
    ):
        launcher.cancel("by-hand")
    assert _deletes(cluster) == [] and cluster.job("by-hand") is not None


def test_a_job_replaced_between_read_and_delete_survives(cluster):
    """The launcher reads our finished Job; before its delete, someone deletes it and creates another
    workload's Job under the name. The uid precondition makes the API refuse that delete (409), the
    launcher reads again and refuses the stranger."""
    launcher = launcher_on(cluster)
    launcher.launch(_spec(), SPEC_URI, Resources(1))
    cluster.set_job_status("r", COMPLETE)

    def replace() -> None:
        cluster.delete_namespaced_job("r", "ml")
        cluster.plant("job", "r", {"app": "postgres"})

    cluster.after_read = replace
    stranger_calls = len(cluster.calls)
    with pytest.raises(FailedPrecondition, match="not made by this controller"):
        launcher.launch(_spec(), SPEC_URI, Resources(1))
    ours = [c for c in cluster.calls[stranger_calls:] if c.startswith("delete")]
    assert ours == ["delete job r", "delete job r with preconditions"]  # the stranger's, then our refused one
    assert cluster.job("r").metadata.labels == {"app": "postgres"}


def test_two_controllers_resubmitting_a_finished_run_make_one_job(cluster):
    """Replica B has read the finished Job when replica A replaces it with the resumed run's new Job:
    B's delete is refused by the uid precondition, and B's create then finds A's Job active."""
    a, b = launcher_on(cluster), launcher_on(cluster)
    a.launch(_spec(), SPEC_URI, Resources(1))
    cluster.set_job_status("r", COMPLETE)
    made_by_a: list[str] = []

    def a_resubmits() -> None:
        a.launch(_spec(), SPEC_URI, Resources(1))
        made_by_a.append(cluster.job("r").metadata.uid)

    cluster.after_read = a_resubmits  # right after B read the finished Job
    with pytest.raises(FailedPrecondition, match="Job r of this run is still active in namespace ml"):
        b.launch(_spec(), SPEC_URI, Resources(1))
    assert cluster.job("r").metadata.uid == made_by_a[0]  # A's new Job, untouched
    assert cluster.job("r").status == k8s.V1JobStatus()
    # A deleted the finished Job; B's delete of it (by uid) was refused once A's Job held the name
    assert _deletes(cluster) == ["delete job r with preconditions"] * 2


def test_cancel_retries_when_the_job_changed_and_deletes_the_one_it_read(cluster):
    """An active Job's status (and so its resourceVersion) moves all the time: a delete refused for
    that is retried on a fresh read."""
    launcher = launcher_on(cluster)
    launcher.launch(_spec(), SPEC_URI, Resources(1))
    cluster.after_read = lambda: cluster.set_job_status("r", k8s.V1JobStatus(active=1, ready=1))
    launcher.cancel("r")
    assert cluster.job("r") is None
    assert _deletes(cluster) == ["delete job r with preconditions"] * 2


def test_a_service_that_is_not_ours_is_refused_and_the_new_job_taken_back(cluster):
    launcher = launcher_on(cluster)
    cluster.plant("service", "rdzv-r", {"app": "something-else"})
    with pytest.raises(FailedPrecondition, match="Service rdzv-r in namespace ml was not made by this"):
        launcher.launch(_spec(), SPEC_URI, Resources(2, 2))
    assert cluster.service("rdzv-r").metadata.labels == {"app": "something-else"}
    assert cluster.job("r") is None  # a multi-node Job without its Service would never rendezvous


def test_a_leftover_service_of_the_run_is_replaced(cluster):
    launcher = launcher_on(cluster)
    launcher.launch(_spec(), SPEC_URI, Resources(2, 2))
    cluster.set_job_status("r", COMPLETE)
    old = cluster.service("rdzv-r").metadata.uid
    launcher.launch(_spec(), SPEC_URI, Resources(2, 2))  # the GC has not removed the old Service yet
    assert cluster.service("rdzv-r").metadata.uid != old
    owner = cluster.service("rdzv-r").metadata.owner_references[0]
    assert owner.uid == cluster.job("r").metadata.uid
    assert "delete service rdzv-r with preconditions" in cluster.calls
