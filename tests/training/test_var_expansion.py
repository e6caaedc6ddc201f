"""Kubernetes expands `$(VAR_NAME)` in a container's `command`, `args` and env `value`s: a user's S3
prefix holding `$(REVIEWSTACK_S3_SECRET_KEY)` would put the secret into the Job's arguments (and so its
log). The rendered objects are checked here by expanding them the way the kubelet does: `expand` and
`as_run` in kube_fake.py implement the rule (cited there); the first test pins `expand` on cases from
the rule's own test suite in Kubernetes.
"""

from __future__ import annotations

from typing import Any

import pytest

from reviewstack.common.runspec import validate_train_spec
from reviewstack.training.launchers import kubernetes as launcher_module
from reviewstack.training.launchers.kubernetes import KubernetesLauncher
from reviewstack.training.manifests import (
    POD_SCRIPT,
    JobTemplate,
    literal,
    render_kubectl_job,
    render_run,
)
from reviewstack.training.settings import LauncherSettings
from reviewstack.training.specs import Resources

from .conftest import spec_data
from .kube_fake import SECRET, FakeCluster, as_run, expand

HOSTILE_OUTPUT = "s3://bucket/team$(REVIEWSTACK_S3_SECRET_KEY)/a$$(X)/b$(NNODES)$(/c$"
HOSTILE_URI = f"{HOSTILE_OUTPUT}/runs/run-a/spec.json"


def _container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


def test_the_expansion_rule_as_kubernetes_states_it():
    env = {"VAR_A": "A", "VAR_B": "B", "VAR_EMPTY": ""}
    cases = {
        "$(VAR_A)-$(VAR_B)": "A-B",
        "$$(VAR_B)_$(VAR_A)": "$(VAR_B)_A",
        "x-$$VAR_A": "x-$VAR_A",
        "$(VAR_DNE)": "$(VAR_DNE)",
        "a$(VAR_EMPTY)b": "ab",
        "$(VAR_A$(VAR_B))": "$(VAR_A$(VAR_B))",
        "$$$$$$$(VAR_A)": "$$$A",
        "$$$$$$(VAR_A)": "$$$(VAR_A)",
        "$(VAR_B)___$(A": "B___$(A",
        "--$($($(--": "--$($($(--",
        "$?_x_$!": "$?_x_$!",
        "${VAR_A}": "${VAR_A}",
        "$(VAR_A)end$": "Aend$",
    }
    assert {text: expand(text, env) for text in cases} == cases


@pytest.mark.parametrize(
    "text", [HOSTILE_URI, "$", "$$", "$(", "$$(X)", "a$b", "$(REVIEWSTACK_S3_SECRET_KEY)", "€$€$(é)"]
)
def test_literal_expands_back_to_the_text(text):
    env = {"X": "x", "REVIEWSTACK_S3_SECRET_KEY": SECRET, "é": "e"}
    assert expand(literal(text), env) == text


@pytest.mark.parametrize("resources", [Resources(1, 1), Resources(4, 2), Resources(0, 1)])
def test_a_spec_uri_with_references_reaches_the_job_as_written(resources):
    template = JobTemplate(store_env={"REVIEWSTACK_S3_ENDPOINT": "minio$(HOME):9000"})
    job = render_run("run-a", HOSTILE_URI, template, resources)[0]
    argv, env = as_run(_container(job))
    assert argv[-1] == HOSTILE_URI  # the job reads exactly the URI the controller wrote the spec to
    assert SECRET not in " ".join(argv)
    assert env["REVIEWSTACK_S3_ENDPOINT"] == "minio$(HOME):9000"  # env values are literal too
    assert env["REVIEWSTACK_S3_SECRET_KEY"] == SECRET  # the secret still reaches the job, as env only
    assert job["metadata"]["annotations"]["review-stack/spec-uri"] == HOSTILE_URI  # never expanded


def test_the_pod_script_is_untouched_by_expansion():
    """The command is not escaped (it reads as a script in the YAML): it must hold no `$(` or `$$`."""
    job = render_run("run-a", "s3://b/runs/run-a/spec.json", JobTemplate(), Resources(8, 1))[0]
    argv, _ = as_run(_container(job))
    assert argv[:4] == ["sh", "-c", POD_SCRIPT, "train"]


def test_the_kubectl_manifests_still_expand_their_own_references():
    """charts/training-job-kubectl read the spec from $(RUNS_URI)/$(RUN_ID): those must expand, and a
    RUNS_URI holding a reference must arrive as written."""
    runs_uri = "s3://bucket/x$(RUN_ID)$$(Y)/runs"  # RUN_ID is defined before RUNS_URI
    job = render_kubectl_job(JobTemplate(managed_by="kubectl"), 8, runs_uri)
    fields = {"metadata.labels['batch.kubernetes.io/job-name']": "my-run"}
    argv, _ = as_run(_container(job), fields)
    assert argv[-1] == f"{runs_uri}/my-run/spec.json"


def test_the_launcher_creates_the_job_with_the_uri_as_written(monkeypatch):
    monkeypatch.setattr(launcher_module, "_RETRY_S", 0.0)
    cluster = FakeCluster()
    settings = LauncherSettings(launcher="kubernetes", k8s_namespace="ml", s3_endpoint="minio:9000")
    launcher = KubernetesLauncher(settings, batch=cluster, core=cluster)
    spec = validate_train_spec(spec_data("s3://bucket/datasets/x/v1", HOSTILE_OUTPUT))
    launcher.launch(spec, HOSTILE_URI, Resources(2, 2))
    argv, _ = as_run(_container(cluster.bodies[("job", "ml", "run-a")]))
    assert argv[-1] == HOSTILE_URI
