"""The training controller's permissions and the kubectl-triggerable Job, against the code they serve:
the Role grants exactly the Kubernetes API calls services/training makes, and the chart's CronJob is the
pod the controller's renderer (reviewstack/training/manifests.py) makes from the controller's settings."""

from __future__ import annotations

import ast
import copy
import inspect
import re
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from reviewstack.training.manifests import APP_LABELS, POD_SCRIPT, JobTemplate, render_cronjob
from reviewstack.training.settings import LauncherSettings

from .helm import CHART, NAMESPACE, PROFILES, ROOT, literal_env

TRAINING_CODE = ROOT / "services" / "training" / "reviewstack" / "training"
SHIPPED_CRONJOB = ROOT / "charts" / "training-job-kubectl" / "cronjob.yaml"
_CALL_API = re.compile(r"call_api\(\s*'([^']+)',\s*'([A-Z]+)'")
_PATH = re.compile(r"^/apis?/(?:(?P<group>[^/]+)/)?v[^/]+/(?P<ns>namespaces/\{namespace\}/)?(?P<rest>.+)$")


def _api_methods() -> dict[str, list[type]]:
    """Every operation of the kubernetes client (method name → the API classes that have it)."""
    methods: dict[str, list[type]] = {}
    for name in dir(k8s):
        api = getattr(k8s, name)
        if isinstance(api, type) and name.endswith("Api") and name != "ApiClient":
            for method in dir(api):
                if hasattr(api, f"{method}_with_http_info"):
                    methods.setdefault(method, []).append(api)
    return methods


def _rule_of(api: type, method: str) -> tuple[str, str, str, bool]:
    """(apiGroup, resource, verb, namespaced) of one client operation, from the REST call it makes."""
    source = inspect.getsource(getattr(api, f"{method}_with_http_info"))
    path, http = _CALL_API.search(source).groups()
    match = _PATH.match(path)
    assert match, f"{api.__name__}.{method}: unexpected path {path}"
    group = "" if path.startswith("/api/") else match["group"]
    parts = match["rest"].split("/")  # jobs, jobs/{name}, jobs/{name}/status
    resource = parts[0] + (f"/{parts[2]}" if len(parts) > 2 else "")
    one = len(parts) > 1
    verb = {
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "GET": "get" if one else ("watch" if method.startswith("watch") else "list"),
        "DELETE": "delete" if one else "deletecollection",
    }[http]
    return group, resource, verb, bool(match["ns"])


def kubernetes_calls_in_code() -> set[tuple[str, str, str, bool]]:
    """Every kubernetes-client operation used anywhere in services/training, as an RBAC rule: called
    (`batch.create_namespaced_job(...)`) or handed to a helper that calls it (`batch.read_namespaced_job`)."""
    methods = _api_methods()
    rules = set()
    for path in sorted(TRAINING_CODE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                for api in methods.get(node.attr, []):
                    rules.add(_rule_of(api, node.attr))
    return rules


def role_rules(rendered) -> set[tuple[str, str, str]]:
    role = rendered.get("Role", "review-stack-training")
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_derivation_finds_the_launchers_calls():
    """Guards the test below: the AST walk must see the calls we know the launcher makes."""
    calls = kubernetes_calls_in_code()
    assert ("batch", "jobs", "create", True) in calls
    assert ("", "services", "create", True) in calls
    assert ("batch", "jobs", "delete", True) in calls  # passed as a function, not called in place
    assert _rule_of(k8s.BatchV1Api, "patch_namespaced_job_status") == ("batch", "jobs/status", "patch", True)
    assert _rule_of(k8s.CoreV1Api, "list_pod_for_all_namespaces")[3] is False


@pytest.mark.parametrize("profile", PROFILES)
def test_rbac_grants_exactly_what_the_controller_calls(render, profile):
    calls = kubernetes_calls_in_code()
    assert all(namespaced for *_, namespaced in calls), "the controller calls a cluster-wide API"
    rendered = render(profile)
    assert role_rules(rendered) == {(group, resource, verb) for group, resource, verb, _ in calls}
    assert not rendered.of_kind("ClusterRole", "ClusterRoleBinding")
    role = rendered.get("Role", "review-stack-training")
    binding = rendered.get("RoleBinding", "review-stack-training")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "review-stack-training",
    }
    deployment = rendered.get("Deployment", "review-stack-training")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    # the controller launches into its own namespace, the one its Role covers
    env = literal_env(deployment["spec"]["template"]["spec"]["containers"][0])
    assert (env["REVIEWSTACK_LAUNCHER"], env["REVIEWSTACK_K8S_NAMESPACE"]) == ("kubernetes", NAMESPACE)
    assert not render(profile, "training.rbac.create=false").of_kind("Role", "RoleBinding")


def launcher_settings(env: dict[str, str], monkeypatch) -> LauncherSettings:
    """LauncherSettings exactly as the controller's process reads them from its environment."""
    for name in [n for n in __import__("os").environ if n.startswith("REVIEWSTACK_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return LauncherSettings()


def _strip_labels(cron: dict) -> dict:
    cron = copy.deepcopy(cron)
    cron["spec"]["jobTemplate"].pop("metadata")
    cron["spec"]["jobTemplate"]["spec"]["template"].pop("metadata")
    return cron["spec"]


VARIANTS = {
    **{name: (name, ()) for name in PROFILES},
    "knobs": (
        "single-gpu",
        (
            "global.imagePullSecrets={regcred}",
            "global.imageRegistry=registry.example",
            "training.job.activeDeadlineSeconds=86400",
            "training.job.ttlSecondsAfterFinished=3600",
            "training.job.scratchSize=200Gi",
            "training.job.priorityClassName=training",
            "training.job.backoffLimit=5",
            "training.job.terminationGracePeriodSeconds=300",
            "training.job.runAsUser=2000",
            "training.job.tolerations[0].key=pool",
            "training.job.tolerations[0].operator=Equal",
            "training.job.tolerations[0].value=h200",
            "training.job.tolerations[0].effect=NoSchedule",
            "s3.region=eu-1",
            "s3.prefix=team-a",
        ),
    ),
    "external-s3": (
        "default",
        ("minio.enabled=false", "s3.endpoint=s3.example.com:9443", "s3.existingSecret=s3"),
    ),
    "cronjob-cpu": ("single-gpu", ("training.cronJob.gpus=0",)),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_cronjob_is_the_pod_the_controller_renders(render, monkeypatch, variant):
    profile, sets = VARIANTS[variant]
    rendered = render(profile, *sets)
    controller = rendered.get("Deployment", "review-stack-training")["spec"]["template"]["spec"][
        "containers"
    ][0]
    settings = launcher_settings(literal_env(controller), monkeypatch)
    template = JobTemplate.from_settings(settings)
    chart = rendered.get("CronJob", "review-stack-train")
    pod = chart["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    gpus = int(pod["containers"][0]["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
    runs_uri = literal_env(pod["containers"][0])["RUNS_URI"]
    assert runs_uri == f"{settings.store}/runs"
    expected = render_cronjob(template, gpus, runs_uri, name="review-stack-train")
    assert _strip_labels(chart) == _strip_labels(expected)
    assert chart["metadata"]["namespace"] == expected["metadata"]["namespace"] == NAMESPACE
    for metadata in (
        chart["spec"]["jobTemplate"]["metadata"],
        chart["spec"]["jobTemplate"]["spec"]["template"]["metadata"],
    ):
        assert APP_LABELS.items() <= metadata["labels"].items()  # what the training-job NetworkPolicy selects
    if variant == "cronjob-cpu":
        assert gpus == 0 and "nodeSelector" not in pod and "tolerations" not in pod
    else:
        assert gpus == settings.k8s_gpus_per_node


def test_multi_gpu_cronjob_is_the_shipped_kubectl_manifest(render):
    """charts/training-job-kubectl/cronjob.yaml (generated by render_manifests) is the multi-gpu profile's
    CronJob, but for the labels and the release's ServiceAccount (without an API token)."""
    chart = render("multi-gpu").get("CronJob", "review-stack-train")
    shipped = yaml.safe_load(SHIPPED_CRONJOB.read_text())
    chart_spec, shipped_spec = _strip_labels(chart), _strip_labels(shipped)
    pod = chart_spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod.pop("serviceAccountName") == "review-stack-training-job"
    # the image: the same repository; the chart's tag follows its appVersion, the file's is a placeholder
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    images = [
        s["jobTemplate"]["spec"]["template"]["spec"]["containers"][0].pop("image")
        for s in (chart_spec, shipped_spec)
    ]
    assert images[0] == f"review-stack/training-job:{version}"
    assert images[1].rpartition(":")[0] == "review-stack/training-job"
    assert chart_spec == shipped_spec
    assert (chart["metadata"]["name"], chart["metadata"]["namespace"]) == (
        shipped["metadata"]["name"],
        shipped["metadata"]["namespace"],
    )


def test_the_pod_script_is_the_renderers():
    assert (CHART / "files" / "train-pod.sh").read_text() == POD_SCRIPT, (
        "charts/review-stack/files/train-pod.sh is stale: copy reviewstack.training.manifests.POD_SCRIPT"
    )


def test_the_training_pods_service_account_has_no_token(render):
    rendered = render()
    account = rendered.get("ServiceAccount", "review-stack-training-job")
    assert account["automountServiceAccountToken"] is False
    controller = literal_env(
        rendered.get("Deployment", "review-stack-training")["spec"]["template"]["spec"]["containers"][0]
    )
    assert controller["REVIEWSTACK_K8S_SERVICE_ACCOUNT"] == "review-stack-training-job"
    assert Path(controller["REVIEWSTACK_AUTH_TOKEN_FILE"]).name == "token"
