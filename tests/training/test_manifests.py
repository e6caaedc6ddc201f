"""Rendered Kubernetes objects: the shapes a run can take, each validated by `kubernetes-validate
--strict` against the Kubernetes 1.30 schemas (offline), and the shipped kubectl manifests, which must
be exactly what the renderer writes today."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pydantic
import pytest
import yaml
from kubernetes import client as k8s

from reviewstack.training import render_manifests
from reviewstack.training.launchers.kubernetes import job_state
from reviewstack.training.manifests import (
    POD_SCRIPT,
    RUN_LABEL,
    JobTemplate,
    job_name,
    render_run,
    to_yaml,
)
from reviewstack.training.settings import LauncherSettings
from reviewstack.training.specs import Resources

from .conftest import BIN

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "charts" / "training-job-kubectl"
K8S_VERSION = "1.30.0"
SPEC_URI = "s3://reviewstack/runs/run-a/spec.json"
SHAPES = {"1gpu": Resources(1, 1), "8gpu": Resources(8, 1), "2x4gpu": Resources(4, 2), "cpu": Resources(0, 1)}


@pytest.fixture(scope="module")
def template() -> JobTemplate:
    settings = LauncherSettings(
        k8s_namespace="training",
        k8s_image="registry.example/review-stack/training-job:1.2.3",
        k8s_node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        k8s_service_account="trainer",
        k8s_memory="400Gi",
        k8s_cpu="32",
        s3_endpoint="minio:9000",
        k8s_image_pull_secrets=["regcred"],
    )
    return JobTemplate.from_settings(settings)


@pytest.fixture(scope="module")
def rendered(template) -> dict[str, list[dict]]:
    return {shape: render_run("run-a", SPEC_URI, template, r) for shape, r in SHAPES.items()}


def kubernetes_validate(paths: list[Path]) -> subprocess.CompletedProcess:
    """The real validator's CLI, strict (unknown fields are errors), on every file at once."""
    return subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", K8S_VERSION, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_rendered_object_passes_strict_validation(rendered, tmp_path):
    paths = []
    for shape, docs in rendered.items():
        path = tmp_path / f"{shape}.yaml"
        path.write_text(to_yaml(docs))
        paths.append(path)
    result = kubernetes_validate([*paths, *sorted(SHIPPED.glob("*.yaml"))])
    assert result.returncode == 0, result.stdout + result.stderr
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    # 4 Jobs + 1 Service + the shipped CronJob and Job
    assert len(passed) == 7, result.stdout
    assert "service/rdzv-run-a" in result.stdout and "cronjob/review-stack-train" in result.stdout


def test_the_validator_rejects_what_kubernetes_would(rendered, tmp_path):
    """Guards the test above: a misspelt field and a wrong type must fail the same validation."""
    job = yaml.safe_load(to_yaml(rendered["1gpu"]))
    job["spec"]["template"]["spec"]["restartPolicyy"] = "Never"
    misspelt = tmp_path / "misspelt.yaml"
    misspelt.write_text(yaml.safe_dump(job))
    job = yaml.safe_load(to_yaml(rendered["1gpu"]))
    job["spec"]["backoffLimit"] = "three"
    wrong_type = tmp_path / "wrong-type.yaml"
    wrong_type.write_text(yaml.safe_dump(job))
    for path in (misspelt, wrong_type):
        result = kubernetes_validate([path])
        assert result.returncode != 0, f"{path.name} passed: {result.stdout}"


def _pod(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def _env(job: dict) -> dict[str, object]:
    container = _pod(job)["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_what_every_shape_shares(rendered):
    for shape, docs in rendered.items():
        job = docs[0]
        pod, container = _pod(job), _pod(job)["containers"][0]
        assert (job["apiVersion"], job["kind"], job["metadata"]["name"]) == ("batch/v1", "Job", "run-a"), (
            shape
        )
        assert job["metadata"]["namespace"] == "training"
        assert job["metadata"]["labels"][RUN_LABEL] == "run-a"
        assert container["command"] == ["sh", "-c", POD_SCRIPT, "train"]
        assert container["args"] == [SPEC_URI]  # the spec travels through the store, not the Job
        assert container["image"] == "registry.example/review-stack/training-job:1.2.3"
        rules = job["spec"]["podFailurePolicy"]["rules"]
        assert rules[0] == {
            "action": "FailJob",
            "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2]},
        }
        assert rules[1]["action"] == "Ignore" and rules[1]["onPodConditions"][0]["type"] == "DisruptionTarget"
        assert pod["restartPolicy"] == "Never"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
        assert {"mountPath": "/dev/shm", "name": "dshm"} in container["volumeMounts"]
        env = _env(job)
        assert env["REVIEWSTACK_S3_ENDPOINT"] == "minio:9000"
        # torchrun lets workers checkpoint after SIGTERM for most of the kubelet's grace period
        assert 30 < int(env["TORCHRUN_SHUTDOWN_TIMEOUT"]) < pod["terminationGracePeriodSeconds"]
        assert env["REVIEWSTACK_S3_SECRET_KEY"] == {
            "secretKeyRef": {"key": "secret-key", "name": "review-stack-s3"}
        }
        assert pod["serviceAccountName"] == "trainer" and pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["requests"] == {"cpu": "32", "memory": "400Gi"}


def test_single_node_gpu_jobs(rendered):
    for shape, gpus in (("1gpu", 1), ("8gpu", 8)):
        docs = rendered[shape]
        assert len(docs) == 1  # no Service: nothing to rendezvous with
        job = docs[0]
        pod = _pod(job)
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
        assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
        assert pod["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
        assert (job["spec"]["completions"], job["spec"]["parallelism"], job["spec"]["backoffLimit"]) == (
            1,
            1,
            3,
        )
        assert "completionMode" not in job["spec"] and "subdomain" not in pod
        env = _env(job)
        assert (env["NNODES"], env["NPROC_PER_NODE"]) == ("1", str(gpus))  # torchrun --nproc-per-node=8


def test_multi_node_is_an_indexed_job_with_a_headless_service(rendered):
    job, service = rendered["2x4gpu"]
    spec, pod = job["spec"], _pod(job)
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    assert spec["backoffLimit"] == 6  # a crash fails both pods: the budget is per node
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert pod["subdomain"] == service["metadata"]["name"] == "rdzv-run-a"
    env = _env(job)
    assert (env["NNODES"], env["NPROC_PER_NODE"]) == ("2", "4")
    assert env["MASTER_ADDR"] == "run-a-0.rdzv-run-a"  # pod 0's hostname under the Service's subdomain
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["port"] == int(env["MASTER_PORT"])


def test_cpu_only_asks_for_no_gpu_node(rendered):
    pod = _pod(rendered["cpu"][0])
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"].get("limits", {})
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert _env(rendered["cpu"][0])["NPROC_PER_NODE"] == "1"


def test_tolerations_from_the_environment(monkeypatch):
    monkeypatch.setenv(
        "REVIEWSTACK_K8S_TOLERATIONS",
        json.dumps(
            [
                {
                    "key": "pool",
                    "operator": "Equal",
                    "value": "h100",
                    "effect": "NoSchedule",
                    "tolerationSeconds": 60,
                }
            ]
        ),
    )
    template = JobTemplate.from_settings(LauncherSettings())
    pod = _pod(render_run("r", SPEC_URI, template, Resources(1))[0])
    assert pod["tolerations"] == [
        {"effect": "NoSchedule", "key": "pool", "operator": "Equal", "tolerationSeconds": 60, "value": "h100"}
    ]
    monkeypatch.setenv("REVIEWSTACK_K8S_TOLERATIONS", '[{"key": "pool", "efect": "NoSchedule"}]')
    with pytest.raises(pydantic.ValidationError, match="efect"):
        LauncherSettings()


def test_long_run_ids_give_short_unique_job_names():
    long_a, long_b = "a" * 60 + "-x", "a" * 60 + "-y"
    assert job_name("run-a") == "run-a"
    assert len(job_name(long_a)) <= 52 and job_name(long_a) != job_name(long_b)
    assert job_name(long_a)[0].isalnum() and job_name(long_a)[-1].isalnum()


def test_shipped_manifests_are_what_the_renderer_writes():
    for name, text in render_manifests.render().items():
        shipped = SHIPPED / name
        assert shipped.exists(), f"{shipped} missing: run python -m reviewstack.training.render_manifests"
        assert shipped.read_text() == text, (
            f"{shipped} is stale: run python -m reviewstack.training.render_manifests"
        )
    cron = yaml.safe_load((SHIPPED / "cronjob.yaml").read_text())
    assert cron["spec"]["suspend"] is True
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["$(RUNS_URI)/$(RUN_ID)/spec.json"]
    run_id = next(e for e in container["env"] if e["name"] == "RUN_ID")
    assert run_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"


def _job(conditions=(), active=0, failed=0, succeeded=0, parallelism=1):
    return k8s.V1Job(
        spec=k8s.V1JobSpec(parallelism=parallelism, template=k8s.V1PodTemplateSpec()),
        status=k8s.V1JobStatus(
            active=active,
            failed=failed,
            succeeded=succeeded,
            conditions=[
                k8s.V1JobCondition(type=t, status="True", reason=r, message=m) for t, r, m in conditions
            ],
        ),
    )


def test_job_status_maps_to_run_states():
    assert job_state(_job()).phase == "pending"
    running = job_state(_job(active=2, failed=2, parallelism=2))
    assert (running.phase, running.attempts) == ("running", 2)
    assert job_state(_job([("Complete", "", "")], succeeded=1)).phase == "succeeded"
    bad = job_state(_job([("Failed", "PodFailurePolicy", "Container trainer exited with 2")], failed=1))
    assert (bad.phase, bad.bad_input, bad.exit_code) == ("failed", True, 2)
    crashed = job_state(_job([("Failed", "BackoffLimitExceeded", "")], failed=4))
    assert crashed.phase == "failed" and not crashed.bad_input and "4 times" in crashed.message
    assert (
        job_state(_job([("Failed", "DeadlineExceeded", "too long")])).message == "DeadlineExceeded: too long"
    )
    assert job_state(_job([("Suspended", "", "")])).phase == "pending"
