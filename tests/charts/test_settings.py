"""The REVIEWSTACK_* variables the chart sets are settings the services have: every name is a field of
the process's settings class (pydantic-settings ignores unknown variables, so a misspelt one would be
silently dropped), and the values parse (types, enums, JSON for dicts and lists)."""

from __future__ import annotations

import importlib
import os

import pytest

from reviewstack.common.settings import ENV_PREFIX, LoggingSettings, StoreSettings

from .helm import PROFILES, ROOT, env_of

# component → (module, settings class) of the process its main container runs
SERVICES = {
    "dataprep": ("reviewstack.dataprep.main", "DataPrepSettings"),
    "training": ("reviewstack.training.main", "TrainingSettings"),
    "review": ("reviewstack.review.main", "ReviewSettings"),
    "evaluation": ("reviewstack.evaluation.main", "EvaluationSettings"),
    "generation": ("reviewstack.generation.main", "EngineSettings"),
    "web": ("reviewstack.web.settings", "WebSettings"),
}


# variables a library module reads from the environment itself, not through a settings class: each must
# still be spelled as in its module
DIRECT_ENV = {
    "REVIEWSTACK_LLM_API_KEY": ROOT / "services/dataprep/reviewstack/dataprep/distill/llm.py",
    "REVIEWSTACK_MATCHER_MODEL_DIR": ROOT / "eval-service/reviewstack/evaluation/static_model.py",
}


def test_direct_variables_are_read_where_they_are_said_to_be():
    for name, path in DIRECT_ENV.items():
        assert f'"{name}"' in path.read_text(), f"{path} no longer reads {name}"


class FetchModelSettings(StoreSettings, LoggingSettings):
    """What files/fetch-model.py reads: the store and logging settings (plus its own FETCH_* variables)."""


def settings_class(component: str, container: str) -> type:
    if container == "fetch-model":
        return FetchModelSettings
    module, name = SERVICES[component]
    return getattr(importlib.import_module(module), name)


def parse(cls: type, env: dict[str, object], monkeypatch) -> object:
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        # a secretKeyRef stands for a value the kubelet fills in
        monkeypatch.setenv(name, value if isinstance(value, str) else "from-a-secret")
    kwargs = {"_cli_parse_args": []} if cls.model_config.get("cli_parse_args") else {}
    return cls(**kwargs)


def reviewstack_containers(rendered):
    for doc, container in rendered.containers():
        component = doc["metadata"]["labels"].get("app.kubernetes.io/component", "")
        if container["name"] == "fetch-model" or (
            doc["kind"] == "Deployment" and component in SERVICES and container["name"] == component
        ):
            yield component, container


@pytest.mark.parametrize("profile", [*PROFILES, "cuda-engine"])
def test_every_variable_is_a_setting_and_parses(render, monkeypatch, profile):
    if profile == "cuda-engine":
        rendered = render(
            "single-gpu",
            "tgi.enabled=false",
            "generation.enabled=true",
            "generation.flavor=cuda",
            "generation.gpus=1",
            "llmEndpoints.judge.url=http://judge:8000/v1",
            "llmEndpoints.judge.model=j",
            "llmEndpoints.judge.apiKeySecret.name=judge",
            "llmEndpoints.distil.url=https://api.example.org/v1",
            "llmEndpoints.distil.model=d",
            "evaluation.judge=judge",
            "dataprep.distillerEndpoint=distil",
            "dataprep.readOnlyRoots[0]=/data/raw",
            "evaluation.matcherModelDir=/tmp/matcher",
            "review.maxNewTokens=900",
            "review.repetitionPenalty=1.1",
            "training.maxConcurrentRuns=4",
        )
    else:
        rendered = render(profile)
    seen = set()
    for component, container in reviewstack_containers(rendered):
        cls = settings_class(component, container["name"])
        env = {k: v for k, v in env_of(container).items() if k.startswith(ENV_PREFIX)}
        fields = {ENV_PREFIX + name.upper() for name in cls.model_fields}
        unknown = set(env) - fields - set(DIRECT_ENV)
        assert not unknown, (
            f"{component}/{container['name']}: {sorted(unknown)} are not settings of {cls.__name__}"
        )
        settings = parse(cls, env, monkeypatch)
        assert settings.log_format == "json"
        if profile == "cuda-engine" and container["name"] == "review":
            assert settings.repetition_penalty == 1.1 and settings.max_new_tokens == 900
            assert settings.served_model == "s3://reviewstack/runs/reviewer-v1/merged"
        if profile == "cuda-engine" and container["name"] in ("evaluation", "dataprep"):
            judge = settings.llm_endpoints["judge"]
            assert (judge.url, judge.model) == ("http://judge:8000/v1", "j")
            assert str(judge.api_key_file) == "/var/run/secrets/reviewstack/llm/judge/api-key"
            assert settings.llm_endpoints["distil"].api_key_file is None
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/var/run/secrets/reviewstack/llm/judge"] == "llm-key-judge"
            if container["name"] == "dataprep":
                assert settings.distiller_endpoint == "distil" and settings.read_only_roots == ["/data/raw"]
            else:
                assert settings.judge == "judge" and settings.max_bootstrap == 10_000
        seen.add((component, container["name"]))
        if component == "web":
            check_web_settings(settings)
        elif container["name"] == component and component != "generation":
            assert settings.port == 50051 and settings.metrics_port == 9090
            assert str(settings.auth_token_file) == "/var/run/secrets/reviewstack/auth/token"
            assert settings.store == "s3://reviewstack" and settings.s3_endpoint == "review-stack-minio:9000"
    expected = {(c, c) for c in ("dataprep", "training", "review", "evaluation")}
    assert expected <= seen
    assert (("web", "web") in seen) == profile.endswith("+web")
    backend = (
        "tgi"
        if rendered.of_kind("Deployment")
        and any(d["metadata"]["name"] == "review-stack-tgi" for d in rendered.of_kind("Deployment"))
        else "generation"
    )
    assert (backend, "fetch-model") in seen


def check_web_settings(settings) -> None:
    """The web page as the chart starts it: HTTP on 8080, the release's services and store, the services'
    token and its own login and session key as files."""
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert {name: s.target for name, s in settings.review_services.items()} == {
        "reviewer": "review-stack-review:50051"
    }
    assert settings.evaluation_service == "review-stack-evaluation:50051"
    assert settings.store == "s3://reviewstack" and settings.s3_endpoint == "review-stack-minio:9000"
    assert str(settings.grpc_token_file) == "/var/run/secrets/reviewstack/auth/token"
    assert settings.login == "token"
    assert str(settings.login_token_file) == "/var/run/secrets/reviewstack/web/login-token"
    assert str(settings.session_secret_file) == "/var/run/secrets/reviewstack/web/session-key"
    assert settings.secure_cookies is False
    assert (settings.max_upload_bytes, settings.max_reviews_in_flight) == (2 * 2**20, 8)
    assert settings.review_timeout_s == 900


def web_settings(rendered, monkeypatch):
    container = rendered.get("Deployment", "review-stack-web")["spec"]["template"]["spec"]["containers"][0]
    return parse(settings_class("web", "web"), env_of(container), monkeypatch)


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        # TLS at the Ingress: cookies over HTTPS only
        (
            (
                "web.ingress.enabled=true",
                "web.ingress.tls[0].secretName=t",
                "web.ingress.tls[0].hosts={a.example}",
            ),
            {"secure_cookies": True},
        ),
        (("web.ingress.enabled=true",), {"secure_cookies": False}),
        # TLS that ends before the page some other way
        (("web.secureCookies=true",), {"secure_cookies": True}),
        (
            ("web.login.mode=proxy", "web.evaluation.enabled=false", "auth.enabled=false"),
            {"login": "proxy", "login_token_file": None, "evaluation_service": "", "grpc_token_file": None},
        ),
        (("evaluation.enabled=false",), {"evaluation_service": ""}),
        (
            (
                "web.reviewServices.llama-3=review.team-a.svc:50051",
                "web.reviewServices.SmolLM2 demo=review-stack-review:50051",
                "web.evaluation.target=evaluation.team-a.svc:50051",
            ),
            {
                "review_services": {
                    "llama-3": "review.team-a.svc:50051",
                    "SmolLM2 demo": "review-stack-review:50051",
                },
                "evaluation_service": "evaluation.team-a.svc:50051",
            },
        ),
        (
            (
                "web.maxUploadBytes=4128768",
                "web.maxReviewsInFlight=32",
                "web.reviewTimeoutSeconds=1800.5",
                "web.login.existingSecret=team-web",
                "web.login.tokenKey=password",
            ),
            {
                "max_upload_bytes": 4128768,
                "max_reviews_in_flight": 32,
                "review_timeout_s": 1800.5,
                "login_token_file": "/var/run/secrets/reviewstack/web/password",
            },
        ),
    ],
)
def test_the_web_page_gets_what_the_values_say(render, monkeypatch, sets, expected):
    settings = web_settings(render("cpu-demo+web", *sets), monkeypatch)
    for name, value in expected.items():
        got = getattr(settings, name)
        if name == "review_services":
            got = {system: served.target for system, served in got.items()}
        assert (str(got) if name.endswith("_file") and got is not None else got) == value, name


@pytest.mark.parametrize(
    ("profile", "sets", "served"),
    [
        ("cpu-demo", (), "SmolLM2-135M-Instruct (embedded)"),
        ("single-gpu", ("tgi.model.prefix=runs/r7/merged",), "s3://reviewstack/runs/r7/merged"),
        ("single-gpu", ("review.backendUrl=http://elsewhere:80",), None),
    ],
)
def test_the_lineage_names_the_served_run_not_the_backends_directory(
    render, monkeypatch, profile, sets, served
):
    """A backend reports the directory it loaded (/models/model for every run): the review service is
    told which run that is, unless the backend is not the release's own."""
    container = render(profile, *sets).get("Deployment", "review-stack-review")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert parse(settings_class("review", "review"), env_of(container), monkeypatch).served_model == served


def test_the_controller_launches_what_the_values_say(render, monkeypatch):
    rendered = render("multi-gpu")
    container = rendered.get("Deployment", "review-stack-training")["spec"]["template"]["spec"]["containers"][
        0
    ]
    settings = parse(settings_class("training", "training"), env_of(container), monkeypatch)
    assert settings.launcher == "kubernetes" and settings.k8s_namespace == "review-stack"
    assert settings.k8s_image == "review-stack/training-job:0.1.0"
    assert settings.k8s_gpus_per_node == 8 and (settings.k8s_cpu, settings.k8s_memory) == ("32", "400Gi")
    assert settings.k8s_node_selector == {"nvidia.com/gpu.present": "true"}
    assert [t.to_k8s() for t in settings.k8s_tolerations] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert (settings.k8s_s3_secret, settings.k8s_s3_access_key_field) == ("review-stack-s3", "access-key")
    assert settings.k8s_service_account == "review-stack-training-job"


@pytest.mark.parametrize(("sets", "sends"), [((), True), (("auth.enabled=false",), False)])
def test_the_engine_checks_the_release_token_and_the_review_service_sends_it(
    render, monkeypatch, sets, sends
):
    """The embedded engine is no open door inside the cluster: it reads the release's token from the same
    Secret as the gRPC services, and the Review service (its only caller) sends it."""
    rendered = render("cpu-demo", *sets)
    engine = rendered.get("Deployment", "review-stack-generation")["spec"]["template"]["spec"]
    review = rendered.get("Deployment", "review-stack-review")["spec"]["template"]["spec"]
    engine_settings = parse(
        settings_class("generation", "generation"), env_of(engine["containers"][0]), monkeypatch
    )
    review_settings = parse(settings_class("review", "review"), env_of(review["containers"][0]), monkeypatch)
    assert engine_settings.host == "0.0.0.0" and engine_settings.payload_limit == 2_000_000
    token = "/var/run/secrets/reviewstack/auth/token"
    assert str(engine_settings.auth_token_file or "") == (token if sends else "")
    assert str(review_settings.backend_auth_token_file or "") == (token if sends else "")
    for pod in (engine, review):
        mounted = {m["mountPath"] for m in pod["containers"][0].get("volumeMounts", [])}
        assert ("/var/run/secrets/reviewstack/auth" in mounted) == sends
    # TGI checks no token: the Review service sends none to it
    tgi = render("single-gpu").get("Deployment", "review-stack-review")["spec"]["template"]["spec"]
    tgi_review = parse(settings_class("review", "review"), env_of(tgi["containers"][0]), monkeypatch)
    assert tgi_review.backend_auth_token_file is None
