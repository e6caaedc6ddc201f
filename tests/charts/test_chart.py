"""The chart as Helm and Kubernetes see it: `helm lint --strict` and `helm template` for every profile,
every rendered object valid under `kubernetes-validate --strict`, values.schema.json refusing what it
should, and the validation helper failing once with every message."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from .helm import BIN, CHART, K8S_VERSIONS, PROFILES, RELEASE, label_of, run_helm, value_args

# what each profile deploys, by kind (a change here is a change users see: update the report in the PR)
COMMON_KINDS = {
    "ConfigMap": 1,  # the fetch-model script
    "CronJob": 1,  # <fullname>-train, suspended
    "Deployment": 5,  # dataprep, training, review, evaluation + one backend
    "NetworkPolicy": 9,  # default-deny, 7 components, training-job pods, test pod
    "Pod": 1,  # the helm test hook
    "Role": 1,
    "RoleBinding": 1,
    "Secret": 2,  # S3 credentials, API token
    "Service": 7,  # 4 gRPC services, the backend, MinIO + its headless Service
    "ServiceAccount": 7,  # 4 services, backend, MinIO, training-job pods
    "StatefulSet": 1,  # MinIO
}
EXPECTED_KINDS = {
    "default": COMMON_KINDS,
    "cpu-demo": COMMON_KINDS,
    "single-gpu": COMMON_KINDS,
    "multi-gpu": {**COMMON_KINDS, "HorizontalPodAutoscaler": 1},  # the review gateway scales
    # + the web page: Deployment, NetworkPolicy, Secret (login token, session key), Service, ServiceAccount
    "cpu-demo+web": {
        **COMMON_KINDS,
        "Deployment": 6,
        "NetworkPolicy": 10,
        "Secret": 3,
        "Service": 8,
        "ServiceAccount": 8,
    },
}


def test_helm_is_a_real_helm_3(helm):
    assert helm.startswith("v3.")


@pytest.mark.parametrize("profile", PROFILES)
def test_lint_strict(helm, profile):
    result = run_helm("lint", "--strict", str(CHART), "--namespace", "review-stack", *value_args(profile))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_renders_what_it_should(render, profile):
    rendered = render(profile)
    kinds: dict[str, int] = {}
    for doc in rendered.docs:
        kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
    assert kinds == EXPECTED_KINDS[profile]
    for doc in rendered.docs:
        assert doc["metadata"]["namespace"] == "review-stack", doc["metadata"]["name"]
        assert doc["metadata"]["name"].startswith(RELEASE)
        assert len(doc["metadata"]["name"]) <= 63


def kubernetes_validate(paths, version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", version, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_object_passes_strict_validation(render, tmp_path, version):
    paths, objects = [], 0
    variants = {
        **{name: (name, ()) for name in PROFILES},
        # the other shapes: external S3, the CUDA engine, every optional knob
        "external-s3": (
            "default",
            ("minio.enabled=false", "s3.endpoint=https://s3.example.com", "s3.existingSecret=s3"),
        ),
        "cuda-engine": (
            "single-gpu",
            ("tgi.enabled=false", "generation.enabled=true", "generation.flavor=cuda", "generation.gpus=1"),
        ),
        "knobs": (
            "multi-gpu",
            (
                "global.imagePullSecrets={regcred}",
                "networkPolicy.allowExternal=false",
                "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
                "tgi.autoscaling.enabled=true",
                "generation.enabled=true",
                "generation.autoscaling.enabled=true",
                "review.service.type=NodePort",
                "review.service.nodePort=30051",
                "minio.console=true",
                "minio.persistence.enabled=false",
                "training.job.activeDeadlineSeconds=86400",
                "training.job.ttlSecondsAfterFinished=3600",
                "training.job.scratchSize=200Gi",
                "training.job.priorityClassName=training",
                "review.tokenizer.source=store",
                "review.tokenizer.prefix=runs/r/merged",
            ),
        ),
        # the web page behind an authenticating ingress, on an external S3, with a Secret of its own
        "web-knobs": (
            "single-gpu",
            (
                "web.enabled=true",
                "web.replicaCount=2",
                "web.login.mode=proxy",
                "web.login.existingSecret=web-login",
                "web.ingress.enabled=true",
                "web.ingress.className=nginx",
                "web.ingress.hosts={review.example.com,*.review.example.com}",
                "web.ingress.tls[0].secretName=review-tls",
                "web.ingress.tls[0].hosts={review.example.com}",
                r"web.ingress.annotations.nginx\.ingress\.kubernetes\.io/auth-url=https://oauth2.example.com/oauth2/auth",
                r"web.networkPolicy.from[0].namespaceSelector.matchLabels.kubernetes\.io/metadata\.name=ingress-nginx",
                "web.reviewServices.team-b=review.team-b.svc:50051",
                "web.evaluation.target=evaluation.team-b.svc:50051",
                "web.service.type=NodePort",
                "minio.enabled=false",
                "s3.endpoint=https://s3.example.com",
                "s3.existingSecret=s3",
            ),
        ),
        # an Ingress for every host, no TLS
        "web-ingress": ("cpu-demo+web", ("web.ingress.enabled=true",)),
    }
    for name, (profile, sets) in variants.items():
        rendered = render(profile, *sets)
        path = tmp_path / f"{name}.yaml"
        path.write_text(rendered.text)
        paths.append(path)
        objects += len(rendered.docs)
    result = kubernetes_validate(paths, version)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    assert len(passed) == objects, result.stdout


def test_the_validator_rejects_a_broken_object(render, tmp_path):
    """Guards the test above: a misspelt field in a rendered Deployment must fail the same validation."""
    deployment = render().get("Deployment", "review-stack-review")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(deployment))
    assert kubernetes_validate([path], K8S_VERSIONS[0]).returncode != 0


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        (["review.replicaCount=two"], "review.replicaCount: Invalid type. Expected: integer"),
        (["revew.enabled=true"], "Additional property revew is not allowed"),
        (["tgi.model.prefx=runs/x/merged"], "Additional property prefx is not allowed"),
        (["generation.flavor=rocm"], "generation.flavor must be one of the following"),
        (["minio.image.digest=latest"], "minio.image.digest: Does not match pattern"),
        (["tgi.gpus=0"], "tgi.gpus: Must be greater than or equal to 1"),
        (["s3.bucket=Not_A_Bucket"], "s3.bucket: Does not match pattern"),
        (["review.repetitionPenalty=4"], "review.repetitionPenalty: Must be less than or equal to 3"),
        (["web.logn.mode=token"], "web: Additional property logn is not allowed"),
        (["web.ingress.tsl[0].secretName=x"], "web.ingress: Additional property tsl is not allowed"),
        (["web.login.mode=oauth"], "web.login.mode must be one of the following"),
        (["web.maxUploadBytes=8388608"], "web.maxUploadBytes: Must be less than or equal to"),
        (["web.reviewServices.reviewer=http://review:50051"], "web.reviewServices.reviewer: Does not match"),
        (["web.evaluation.target=evaluation"], "web.evaluation.target: Does not match pattern"),
        (["web.secureCookies=yes"], "web.secureCookies: Invalid type"),
    ],
)
def test_values_schema_rejects(helm, sets, complaint):
    args = [a for s in sets for a in ("--set", s)]
    for command in (["lint", "--strict", str(CHART)], ["template", RELEASE, str(CHART)]):
        result = run_helm(*command, *args)
        assert result.returncode != 0, f"helm {command[0]} accepted {sets}"
        assert complaint in result.stdout + result.stderr, result.stdout + result.stderr


def test_values_schema_rejects_a_wrong_type_in_a_values_file(helm, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  job:\n    gpusPerNode: '8'\n")
    result = run_helm("template", RELEASE, str(CHART), "-f", str(bad))
    assert result.returncode != 0
    assert "training.job.gpusPerNode: Invalid type" in result.stderr


def test_validation_fails_once_with_every_message(helm):
    result = run_helm(
        "template", RELEASE, str(CHART), "--set", "minio.enabled=false", "--set", "tgi.enabled=false"
    )
    assert result.returncode != 0
    assert result.stderr.count("VALUES VALIDATION") == 1
    for key in ("s3.endpoint", "s3.existingSecret", "review.backendUrl"):
        assert f"review-stack: {key}" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("sets", "key"),
    [
        (["generation.enabled=true", "generation.gpus=1"], "generation.gpus"),
        (["generation.enabled=true", "generation.flavor=cuda"], "generation.gpus"),
        (["tgi.model.prefix="], "tgi.model.prefix"),
        (["review.tokenizer.source=store"], "review.tokenizer.prefix"),
        (["web.enabled=true", "review.enabled=false"], "web.reviewServices"),
        (["web.enabled=true", "web.login.sessionKeyKey=login-token"], "web.login.sessionKeyKey"),
    ],
)
def test_validation_rejects_inconsistent_values(helm, sets, key):
    result = run_helm("template", RELEASE, str(CHART), *[a for s in sets for a in ("--set", s)])
    assert result.returncode != 0
    assert f"review-stack: {key}" in result.stderr, result.stderr


def test_names_follow_the_release(render):
    """A release not named after the chart prefixes it (bitnami's fullname); fullnameOverride replaces it."""
    other = run_helm("template", "team-a", str(CHART), check=True).stdout
    names = {d["metadata"]["name"] for d in yaml.safe_load_all(other) if d}
    assert "team-a-review-stack-review" in names and "team-a-review-stack-train" in names
    override = render("default", "fullnameOverride=rs")
    assert {d["metadata"]["name"] for d in override.of_kind("Deployment")} == {
        "rs-dataprep",
        "rs-training",
        "rs-review",
        "rs-evaluation",
        "rs-tgi",
    }
    assert override.get("Secret", "rs-s3") and override.get("CronJob", "rs-train")


def test_images_follow_the_registry_and_app_version(render):
    rendered = render("cpu-demo", "global.imageRegistry=registry.example", "dataprep.image.tag=9.9.9")
    images = {c["name"]: c["image"] for _, c in rendered.containers()}
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert images["dataprep"] == "registry.example/review-stack/dataprep:9.9.9"
    assert images["review"] == f"registry.example/review-stack/review:{version}"
    assert images["generation"] == f"registry.example/review-stack/generation:{version}-cpu"
    assert images["fetch-model"] == f"registry.example/review-stack/generation:{version}-cpu"
    assert images["trainer"] == f"registry.example/review-stack/training-job:{version}-cpu"
    # the mirror replaces MinIO's registry too; its tag stays pinned by digest
    assert images["minio"].startswith("registry.example/minio/minio:RELEASE.")
    assert "@sha256:" in images["minio"]
    gpu = {c["name"]: c["image"] for _, c in render("single-gpu").containers()}
    assert gpu["tgi"] == f"review-stack/tgi:{version}"
    assert gpu["trainer"] == f"review-stack/training-job:{version}"  # the CUDA build
    assert gpu["minio"].startswith("quay.io/minio/minio:RELEASE.") and "@sha256:" in gpu["minio"]


def render_notes(tmp_path, profile: str = "default", *sets: str) -> str:
    """NOTES.txt as `helm install` prints it: `helm template` never renders NOTES, so a copy of the chart
    wraps them in a template whose output is a ConfigMap holding the text."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "_notes.tpl").write_text('{{- define "test.notes" -}}\n' + notes + "{{- end -}}\n")
    (chart / "templates" / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ include "test.notes" . | quote }}\n'
    )
    out = run_helm(
        "template",
        RELEASE,
        str(chart),
        "-n",
        "review-stack",
        "-s",
        "templates/notes.yaml",
        *value_args(profile, sets),
        check=True,
    ).stdout
    return yaml.safe_load(out)["data"]["notes"]


def test_notes_say_how_to_reach_review_and_start_a_run(helm, tmp_path):
    notes = render_notes(tmp_path, "single-gpu")
    for line in (
        "kubectl -n review-stack port-forward svc/review-stack-review 50051:50051",
        "kubectl -n review-stack get secret review-stack-auth -o jsonpath='{.data.token}' | base64 -d",
        'grpcurl -plaintext -H "authorization: Bearer $REVIEWSTACK_TOKEN" $REVIEW describe',
        "grpc.health.v1.Health/Check",
        "reviewstack review paper.pdf --server $REVIEW",
        "kubectl -n review-stack port-forward svc/review-stack-minio 9000:9000",
        "kubectl -n review-stack create job --from=cronjob/review-stack-train my-run",
        "helm test review-stack -n review-stack",
    ):
        assert line in notes, line
    assert "WARNING" not in notes
    exposed = render_notes(
        tmp_path / "lb",
        "cpu-demo",
        "review.service.type=LoadBalancer",
        "auth.enabled=false",
        "minio.persistence.enabled=false",
    )
    assert (
        "status.loadBalancer.ingress[0].ip" in exposed
        and "port-forward svc/review-stack-review" not in exposed
    )
    assert "the embedded engine (cpu)" in exposed
    assert exposed.count("WARNING") == 2 and "authorization: Bearer" not in exposed


SWITCHED_OFF = {
    "no training": (("training.enabled=false",), {"training"}),
    "no training, no cronjob": (("training.enabled=false", "training.cronJob.enabled=false"), {"training"}),
    "no gateway, no backend": (("review.enabled=false", "tgi.enabled=false"), {"review", "tgi"}),
    "no dataprep, no evaluation": (
        ("dataprep.enabled=false", "evaluation.enabled=false"),
        {"dataprep", "evaluation"},
    ),
}


def test_components_switch_off(render, tmp_path):
    paths = []
    for name, (sets, gone) in SWITCHED_OFF.items():
        rendered = render("default", *sets)
        components = {
            d["metadata"]["labels"]["app.kubernetes.io/component"] for d in rendered.of_kind("Deployment")
        }
        assert not components & gone, name
        assert all(not d["metadata"]["name"].endswith(tuple(f"-{c}" for c in gone)) for d in rendered.docs), (
            name
        )
        path = tmp_path / f"{len(paths)}.yaml"
        path.write_text(rendered.text)
        paths.append(path)
        assert bool(rendered.of_kind("CronJob")) == ("training.cronJob.enabled=false" not in sets)
        assert bool(rendered.of_kind("Pod")) == ("review.enabled=false" not in sets)  # the test hook
    result = kubernetes_validate(paths, K8S_VERSIONS[0])
    assert result.returncode == 0, result.stdout + result.stderr


def test_notes_say_how_to_open_the_web_page(helm, tmp_path):
    notes = render_notes(tmp_path, "cpu-demo+web")
    for line in (
        "kubectl -n review-stack port-forward svc/review-stack-web 8080:8080",
        "http://localhost:8080/",
        "kubectl -n review-stack get secret review-stack-web -o jsonpath='{.data.login-token}' | base64 -d",
    ):
        assert line in notes, line
    assert "WARNING" not in notes
    assert "4. Open the web page" not in render_notes(tmp_path / "off", "cpu-demo")
    proxied = render_notes(
        tmp_path / "proxy",
        "cpu-demo+web",
        "web.login.mode=proxy",
        "web.ingress.enabled=true",
        "web.ingress.hosts={review.example.com}",
        "web.ingress.tls[0].secretName=review-tls",
    )
    assert "https://review.example.com/" in proxied and "port-forward svc/review-stack-web" not in proxied
    assert "login-token" not in proxied
    # nothing keeps other pods from going around the proxy: said loudly
    assert "WARNING: web.login.mode=proxy" in proxied
    restricted = render_notes(
        tmp_path / "restricted",
        "cpu-demo+web",
        "web.login.mode=proxy",
        "web.networkPolicy.from[0].namespaceSelector.matchLabels.name=ingress-nginx",
    )
    assert "WARNING" not in restricted


def test_the_web_page_is_off_by_default(render):
    """web.enabled=false renders no object of the page and leaves the other policies as they were, whatever
    else web.* says."""
    default = render("cpu-demo")
    for rendered in (default, render("cpu-demo", "web.ingress.enabled=true", "web.login.mode=proxy")):
        assert not [d for d in rendered.docs if d["metadata"]["name"].endswith("-web")]
        assert not rendered.of_kind("Ingress")
        assert all(label_of(d) != "web" for d in rendered.docs)
        assert "component: web" not in rendered.text
    on = render("cpu-demo+web")
    assert {label_of(d) for d in on.docs if d["metadata"]["name"] == "review-stack-web"} == {"web"}
    assert {d["kind"] for d in on.docs if d["metadata"]["name"] == "review-stack-web"} == {
        "Deployment",
        "NetworkPolicy",
        "Secret",
        "Service",
        "ServiceAccount",
    }
