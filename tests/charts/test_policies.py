"""Policies every rendered profile must meet, read from the rendered YAML: probes, resources, a locked-down
securityContext, secrets only through Secrets, GPUs only where they are needed, the helm test hook."""

from __future__ import annotations

import base64
import re

import pytest
import yaml

from .helm import CHART, PROFILES, WORKLOAD_KINDS, env_of, label_of, literal_env

# env vars that hold a credential: they must come from a Secret (secretKeyRef), never be literals
SECRET_ENV = re.compile(r"(ACCESS_KEY|SECRET_KEY|PASSWORD|API_KEY|_TOKEN|ROOT_USER)$")
# containers allowed to ask for GPUs: TGI, the engine's CUDA flavour, the training job
GPU_CONTAINERS = {("tgi", "tgi"), ("generation", "generation"), ("training-job", "trainer")}


def long_running(rendered):
    """(object, container) of the Deployments' and StatefulSets' main containers."""
    return [(d, c) for d, c in rendered.containers(init=False) if d["kind"] in WORKLOAD_KINDS]


@pytest.mark.parametrize("profile", PROFILES)
def test_every_server_container_has_probes(render, profile):
    for doc, container in long_running(render(profile)):
        where = f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert probe in container, f"{where} has no {probe}"
        handler = container["readinessProbe"]
        if label_of(doc) in ("dataprep", "training", "review", "evaluation"):
            # kubelet's native gRPC probe on grpc.health.v1, on the port the server listens on
            port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
            assert handler["grpc"] == {"port": port}, where
            assert env_of(container)["REVIEWSTACK_PORT"] == str(port)
        else:
            assert "httpGet" in handler, where


@pytest.mark.parametrize("profile", PROFILES)
def test_every_container_has_cpu_and_memory_requests_and_limits(render, profile):
    for doc, container in render(profile).containers():
        where = f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}"
        resources = container.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        if doc["kind"] == "CronJob":
            # the training job, exactly as the controller's renderer shapes it: CPU and memory requested,
            # memory limited (= request, so the node never evicts it first), no CPU limit (throttling
            # would starve the data loaders)
            assert {"cpu", "memory"} <= requests.keys() and "memory" in limits, where
            assert limits["memory"] == requests["memory"], where
            continue
        assert {"cpu", "memory"} <= requests.keys(), f"{where} requests {requests}"
        assert {"cpu", "memory"} <= limits.keys(), f"{where} limits {limits}"


@pytest.mark.parametrize("profile", PROFILES)
def test_every_pod_runs_non_root_without_privileges(render, profile):
    rendered = render(profile)
    for doc, pod, _ in rendered.pods():
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        pod_sc = pod.get("securityContext", {})
        assert pod_sc.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        for container in pod["containers"] + pod.get("initContainers", []):
            sc = container.get("securityContext", {})
            what = f"{where}/{container['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, what
            assert pod_sc.get("runAsUser", 1000) != 0 and sc.get("runAsUser", 1000) != 0, what
            assert sc.get("allowPrivilegeEscalation") is False, what
            assert sc.get("capabilities") == {"drop": ["ALL"]}, what
            assert not sc.get("privileged"), what
            if doc["kind"] == "CronJob":
                continue  # the trainer writes where its image wants (HOME and caches are on /scratch)
            assert sc.get("readOnlyRootFilesystem") is True, what
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{what}: a read-only root needs a writable /tmp"
    # only the training controller talks to the Kubernetes API: every other pod goes without a token,
    # by its own setting or its ServiceAccount's (the training Jobs' pods keep the renderer's shape)
    accounts = {a["metadata"]["name"]: a for a in rendered.of_kind("ServiceAccount")}
    for account in accounts.values():
        assert account["automountServiceAccountToken"] is False
    with_token = set()
    for doc, pod, _ in rendered.pods():
        account = accounts.get(pod.get("serviceAccountName", "default"), {})
        if pod.get("automountServiceAccountToken", account.get("automountServiceAccountToken", True)):
            with_token.add(doc["metadata"]["name"])
    assert with_token == {"review-stack-training"}


SENTINELS = {
    "s3.accessKey": "SENTINELaccessKEY0001",
    "s3.secretKey": "SENTINELsecretKEY0002",
    "auth.token": "SENTINELauthTOKEN0003",
}


def test_secret_values_appear_only_in_secrets(render):
    """Set every credential to a recognisable value: it must be in a Secret and nowhere else (no env
    literal, ConfigMap, annotation or argument)."""
    rendered = render("cpu-demo", *(f"{k}={v}" for k, v in SENTINELS.items()))
    secrets = {d["metadata"]["name"]: d for d in rendered.of_kind("Secret")}
    stored = {base64.b64decode(v).decode() for s in secrets.values() for v in s["data"].values()}
    assert set(SENTINELS.values()) <= stored
    for doc in rendered.docs:
        if doc["kind"] == "Secret":
            continue
        text = yaml.safe_dump(doc)
        for key, sentinel in SENTINELS.items():
            assert sentinel not in text, f"{key} leaks into {doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("profile", PROFILES)
def test_credentials_reach_containers_only_through_secrets(render, profile):
    rendered = render(profile)
    secret_names = {d["metadata"]["name"] for d in rendered.of_kind("Secret")}
    for doc, container in rendered.containers():
        for name, value in env_of(container).items():
            if SECRET_ENV.search(name):
                where = f"{doc['metadata']['name']}/{container['name']} {name}"
                assert isinstance(value, dict) and "secretKeyRef" in value, f"{where} is a literal"
                assert value["secretKeyRef"]["name"] in secret_names, where
    for _, pod, _ in rendered.pods():
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secret_names
    for config_map in rendered.of_kind("ConfigMap"):
        assert set(config_map["data"]) == {"fetch-model.py"}
    # the generated credentials: random, of a usable length
    s3 = rendered.get("Secret", "review-stack-s3")["data"]
    assert len(base64.b64decode(s3["access-key"])) == 20 and len(base64.b64decode(s3["secret-key"])) == 40
    assert (
        s3["access-key"]
        != render("default", "logLevel=DEBUG").get("Secret", "review-stack-s3")["data"]["access-key"]
    )


def _secret_like_values(node, trail=""):
    """(key path, value) of every non-empty string under a key that names a credential."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _secret_like_values(value, f"{trail}.{key}")
    elif (
        isinstance(node, str)
        and node
        and re.search(r"(?i)(password|accesskey|secretkey|token|apikey)$", trail)
    ):
        yield trail, node


def test_no_values_file_holds_a_secret():
    for path in [CHART / "values.yaml", *sorted((CHART / "values").glob("*.yaml"))]:
        values = yaml.safe_load(path.read_text()) or {}
        assert list(_secret_like_values(values)) == [], path
    # the walk does see the keys the credentials live under
    assert list(_secret_like_values({"s3": {"accessKey": "x"}, "auth": {"token": "y"}})) == [
        (".s3.accessKey", "x"),
        (".auth.token", "y"),
    ]


def test_existing_secrets_switch_off_secret_creation(render):
    rendered = render(
        "single-gpu",
        "s3.existingSecret=team-s3",
        "s3.accessKeyKey=AWS_ACCESS_KEY_ID",
        "s3.secretKeyKey=AWS_SECRET_ACCESS_KEY",
        "auth.existingSecret=team-api",
        "auth.tokenKey=bearer",
    )
    assert rendered.of_kind("Secret") == []
    refs = set()
    for _, container in rendered.containers():
        for value in env_of(container).values():
            if isinstance(value, dict) and "secretKeyRef" in value:
                refs.add((value["secretKeyRef"]["name"], value["secretKeyRef"]["key"]))
    assert refs == {("team-s3", "AWS_ACCESS_KEY_ID"), ("team-s3", "AWS_SECRET_ACCESS_KEY")}
    for _, pod, _ in rendered.pods():
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"] == {
                    "secretName": "team-api",
                    "items": [{"key": "bearer", "path": "bearer"}],
                }
    training = literal_env(_main(rendered, "review-stack-training"))
    assert training["REVIEWSTACK_K8S_S3_SECRET"] == "team-s3"
    assert training["REVIEWSTACK_K8S_S3_ACCESS_KEY_FIELD"] == "AWS_ACCESS_KEY_ID"
    assert training["REVIEWSTACK_AUTH_TOKEN_FILE"] == "/var/run/secrets/reviewstack/auth/bearer"
    # each Secret on its own
    only_s3 = render("default", "s3.existingSecret=team-s3")
    assert [s["metadata"]["name"] for s in only_s3.of_kind("Secret")] == ["review-stack-auth"]
    no_auth = render("default", "auth.enabled=false")
    assert [s["metadata"]["name"] for s in no_auth.of_kind("Secret")] == ["review-stack-s3"]
    assert "REVIEWSTACK_AUTH_TOKEN_FILE" not in env_of(_main(no_auth, "review-stack-review"))


def _main(rendered, name):
    return rendered.get("Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def gpu_users(rendered) -> dict[tuple[str, str], str]:
    """(component, container) → GPUs, of every container that requests or limits nvidia.com/gpu."""
    users = {}
    for doc, container in rendered.containers():
        resources = container.get("resources", {})
        gpus = {**resources.get("requests", {}), **resources.get("limits", {})}.get("nvidia.com/gpu")
        if gpus is not None:
            users[(label_of(doc), container["name"])] = gpus
    return users


def test_cpu_demo_asks_for_no_gpu(render):
    rendered = render("cpu-demo")
    assert gpu_users(rendered) == {}
    for doc, pod, _ in rendered.pods():
        assert "nvidia" not in yaml.safe_dump(pod.get("nodeSelector", {})), doc["metadata"]["name"]
        assert "nvidia" not in yaml.safe_dump(pod.get("tolerations", [])), doc["metadata"]["name"]
    # nor do the runs the controller launches
    assert literal_env(_main(rendered, "review-stack-training"))["REVIEWSTACK_K8S_GPUS_PER_NODE"] == "0"
    generation = _main(rendered, "review-stack-generation")
    assert generation["image"].endswith("-cpu") and env_of(generation)["REVIEWSTACK_DEVICE"] == "cpu"


@pytest.mark.parametrize(
    ("profile", "sets", "expected"),
    [
        ("default", (), {("tgi", "tgi"): "1", ("training-job", "trainer"): "1"}),
        ("single-gpu", (), {("tgi", "tgi"): "1", ("training-job", "trainer"): "1"}),
        ("multi-gpu", (), {("tgi", "tgi"): "2", ("training-job", "trainer"): "8"}),
        (
            "single-gpu",
            ("tgi.enabled=false", "generation.enabled=true", "generation.flavor=cuda", "generation.gpus=1"),
            {("generation", "generation"): "1", ("training-job", "trainer"): "1"},
        ),
    ],
)
def test_gpus_only_where_needed(render, profile, sets, expected):
    rendered = render(profile, *sets)
    users = gpu_users(rendered)
    assert users == expected
    assert set(users) <= GPU_CONTAINERS
    gpu_pods = {
        label_of(d)
        for d, pod, _ in rendered.pods()
        if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in pod["containers"])
    }
    for doc, pod, _ in rendered.pods():
        # GPU pods tolerate the GPU pool's taint; nothing else does
        tolerates = any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
        assert tolerates == (label_of(doc) in gpu_pods), doc["metadata"]["name"]
    training = literal_env(_main(rendered, "review-stack-training"))
    assert training["REVIEWSTACK_K8S_GPUS_PER_NODE"] == expected[("training-job", "trainer")]
    if ("tgi", "tgi") in expected:
        tgi = _main(rendered, "review-stack-tgi")
        args = tgi["args"]
        assert args[args.index("--num-shard") + 1] == expected[("tgi", "tgi")]
        dshm = next(
            v
            for v in rendered.get("Deployment", "review-stack-tgi")["spec"]["template"]["spec"]["volumes"]
            if v["name"] == "dshm"
        )
        assert dshm["emptyDir"]["medium"] == "Memory"


def test_backend_wiring_and_refusal_penalty(render):
    gpu = render("single-gpu", "tgi.refusalPenalty=1.5")
    review = literal_env(_main(gpu, "review-stack-review"))
    assert review["REVIEWSTACK_BACKEND_URL"] == "http://review-stack-tgi:8080"
    # TGI applies λ per deployment; the gateway records the same λ and refuses requests for another
    assert literal_env(_main(gpu, "review-stack-tgi"))["REVIEWSTACK_REFUSAL_PENALTY"] == "1.5"
    assert review["REVIEWSTACK_BACKEND_REFUSAL_PENALTY"] == "1.5"
    demo = render("cpu-demo")
    review = literal_env(_main(demo, "review-stack-review"))
    assert review["REVIEWSTACK_BACKEND_URL"] == "http://review-stack-generation:8080"
    assert "REVIEWSTACK_BACKEND_REFUSAL_PENALTY" not in review  # the engine takes λ per request
    # the gateway counts tokens with the served model's tokenizer, fetched beside it
    assert review["REVIEWSTACK_TOKENIZER"] == "/models/model"
    pod = demo.get("Deployment", "review-stack-review")["spec"]["template"]["spec"]
    fetch = literal_env(pod["initContainers"][0])
    assert (fetch["FETCH_SOURCE"], fetch["FETCH_ONLY"]) == ("embedded", "tokenizer")
    engine = demo.get("Deployment", "review-stack-generation")["spec"]["template"]["spec"]
    assert literal_env(engine["initContainers"][0])["FETCH_SOURCE"] == "embedded"
    tgi_fetch = literal_env(
        gpu.get("Deployment", "review-stack-tgi")["spec"]["template"]["spec"]["initContainers"][0]
    )
    assert (tgi_fetch["FETCH_SOURCE"], tgi_fetch["FETCH_PREFIX"]) == ("store", "runs/reviewer-v1/merged")
    external = render("default", "review.backendUrl=http://tgi.other:80")
    assert (
        literal_env(_main(external, "review-stack-review"))["REVIEWSTACK_BACKEND_URL"]
        == "http://tgi.other:80"
    )


def test_external_s3_replaces_minio(render):
    rendered = render(
        "default",
        "minio.enabled=false",
        "s3.endpoint=https://s3.eu.example.com",
        "s3.existingSecret=s3",
        "s3.region=eu-1",
        "s3.prefix=team-a",
    )
    assert not rendered.of_kind("StatefulSet")
    assert all("minio" not in d["metadata"]["name"] for d in rendered.docs)
    env = literal_env(_main(rendered, "review-stack-dataprep"))
    assert env["REVIEWSTACK_S3_ENDPOINT"] == "https://s3.eu.example.com"
    assert env["REVIEWSTACK_STORE"] == "s3://reviewstack/team-a"
    assert (env["REVIEWSTACK_S3_SECURE"], env["REVIEWSTACK_S3_REGION"]) == ("true", "eu-1")
    policy = rendered.get("NetworkPolicy", "review-stack-dataprep")
    s3_rule = next(r for r in policy["spec"]["egress"] if r["ports"][0]["port"] != 53)
    assert s3_rule == {
        "ports": [{"port": 443, "protocol": "TCP"}],
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
    }
    cron = rendered.get("CronJob", "review-stack-train")
    trainer = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert literal_env(trainer)["RUNS_URI"] == "s3://reviewstack/team-a/runs"


def test_helm_test_hook_checks_the_review_service_health(render):
    rendered = render()
    hooks = [
        p
        for p in rendered.of_kind("Pod")
        if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
    ]
    assert len(hooks) == 1
    pod = hooks[0]
    container = pod["spec"]["containers"][0]
    service = rendered.get("Service", "review-stack-review")
    assert literal_env(container)["TARGET"] == f"review-stack-review:{service['spec']['ports'][0]['port']}"
    script = container["command"][-1]
    assert "grpc_health.v1" in script and "reviewstack.v1.Review" in script and "sys.exit(1)" in script
    compile(script, "helm-test", "exec")  # the script at least parses
    assert pod["spec"]["restartPolicy"] == "Never"
    assert "hook-succeeded" in pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    assert not [p for p in render("default", "tests.enabled=false").of_kind("Pod")]


def test_web_secrets_are_generated_into_a_secret_and_mounted_as_files(render):
    """The page's login token and session key: in the chart's Secret "<fullname>-web" (random, or the
    value --set), read from mounted files, never in env or any other object."""
    sentinel = "SENTINELwebLOGIN0004"
    rendered = render("cpu-demo+web", f"web.login.token={sentinel}")
    secret = rendered.get("Secret", "review-stack-web")
    assert base64.b64decode(secret["data"]["login-token"]).decode() == sentinel
    assert len(base64.b64decode(secret["data"]["session-key"])) == 64
    for doc in rendered.docs:
        if doc["kind"] != "Secret":
            assert sentinel not in yaml.safe_dump(doc), f"{doc['kind']}/{doc['metadata']['name']}"
    generated = render("cpu-demo+web").get("Secret", "review-stack-web")["data"]
    assert len(base64.b64decode(generated["login-token"])) == 32
    pod = render("cpu-demo+web").get("Deployment", "review-stack-web")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["web-login"]["secret"] == {
        "secretName": "review-stack-web",
        "items": [
            {"key": "login-token", "path": "login-token"},
            {"key": "session-key", "path": "session-key"},
        ],
    }
    # the services' bearer token: the release's auth Secret, as for the services themselves
    assert volumes["auth-token"]["secret"]["secretName"] == "review-stack-auth"
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["web-login"]["readOnly"] is True and mounts["auth-token"]["readOnly"] is True


def test_web_existing_secret_and_proxy_mode(render):
    rendered = render(
        "cpu-demo+web",
        "web.login.existingSecret=team-web",
        "web.login.sessionKeyKey=cookie-key",
        "web.login.mode=proxy",
    )
    assert "review-stack-web" not in {s["metadata"]["name"] for s in rendered.of_kind("Secret")}
    pod = rendered.get("Deployment", "review-stack-web")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "web-login")
    # proxy mode: no login token to read, only the key signing the sessions
    assert volume["secret"] == {
        "secretName": "team-web",
        "items": [{"key": "cookie-key", "path": "cookie-key"}],
    }
    env = env_of(pod["containers"][0])
    assert env["REVIEWSTACK_LOGIN"] == "proxy" and "REVIEWSTACK_LOGIN_TOKEN_FILE" not in env
    assert env["REVIEWSTACK_SESSION_SECRET_FILE"] == "/var/run/secrets/reviewstack/web/cookie-key"


def test_web_ingress_with_tls_sets_secure_cookies(render):
    rendered = render(
        "cpu-demo+web",
        "web.ingress.enabled=true",
        "web.ingress.className=nginx",
        "web.ingress.hosts={review.example.com}",
        "web.ingress.tls[0].secretName=review-tls",
        "web.ingress.tls[0].hosts={review.example.com}",
        r"web.ingress.annotations.nginx\.ingress\.kubernetes\.io/proxy-body-size=8m",
    )
    ingress = rendered.get("Ingress", "review-stack-web")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "review-tls", "hosts": ["review.example.com"]}]
    assert ingress["metadata"]["annotations"] == {"nginx.ingress.kubernetes.io/proxy-body-size": "8m"}
    backend = {"service": {"name": "review-stack-web", "port": {"name": "http"}}}
    assert ingress["spec"]["rules"] == [
        {
            "host": "review.example.com",
            "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]},
        }
    ]
    web = literal_env(_main(rendered, "review-stack-web"))
    assert web["REVIEWSTACK_SECURE_COOKIES"] == "true"
    # no TLS at the ingress (or no ingress): cookies over plain HTTP too, unless web.secureCookies says so
    plain = render("cpu-demo+web", "web.ingress.enabled=true")
    assert literal_env(_main(plain, "review-stack-web"))["REVIEWSTACK_SECURE_COOKIES"] == "false"
    assert "host" not in plain.get("Ingress", "review-stack-web")["spec"]["rules"][0]
    forced = render("cpu-demo+web", "web.secureCookies=true")
    assert literal_env(_main(forced, "review-stack-web"))["REVIEWSTACK_SECURE_COOKIES"] == "true"


def test_web_page_probes_and_image(render):
    rendered = render("cpu-demo+web", "global.imageRegistry=registry.example")
    container = _main(rendered, "review-stack-web")
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert container["image"] == f"registry.example/review-stack/web:{version}"
    assert container["command"] == ["reviewstack-web"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    paths = {
        probe: container[probe]["httpGet"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {
        "startupProbe": {"path": "/healthz", "port": "http"},
        "livenessProbe": {"path": "/healthz", "port": "http"},
        "readinessProbe": {"path": "/readyz", "port": "http"},
    }
    service = rendered.get("Service", "review-stack-web")["spec"]
    assert service["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}
    ]
    pod = rendered.get("Deployment", "review-stack-web")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert tmp == {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}
