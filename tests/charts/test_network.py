"""NetworkPolicies: every workload is covered, and the rendered policies, evaluated the way the
NetworkPolicy API defines them, allow exactly the calls the stack makes and deny the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from .helm import PROFILES, WORKLOAD_KINDS, label_of


@dataclass
class Pod:
    """A pod as the policies see it: labels and its containers' named ports."""

    name: str
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)


def pods_of(rendered) -> dict[str, Pod]:
    """component → Pod, plus the training job's pods as the controller creates them (renderer labels only)."""
    pods = {}
    for doc, spec, labels in rendered.pods():
        ports = {
            p["name"]: p["containerPort"]
            for c in spec["containers"]
            for p in c.get("ports", [])
            if "name" in p
        }
        pods[labels.get("app.kubernetes.io/component", doc["metadata"]["name"])] = Pod(
            doc["metadata"]["name"], labels, ports
        )
    pods["controller-created-job"] = Pod(
        "run-a",
        {
            "app.kubernetes.io/name": "review-stack",
            "app.kubernetes.io/component": "training-job",
            "app.kubernetes.io/managed-by": "reviewstack-training",
            "review-stack/run-id": "run-a",
        },
        {"rdzv": 29500},
    )
    return pods


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        value = labels.get(expr["key"])
        if expr["operator"] == "In" and value not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and value in expr["values"]:
            return False
        if expr["operator"] == "Exists" and value is None:
            return False
    return True


def peer_matches(peers: list[dict[str, Any]] | None, other: Pod | None) -> bool:
    """`other` None is a destination outside the cluster (an ipBlock matches it; a pod selector does not)."""
    if peers is None:
        return True
    for peer in peers:
        if other is None:
            if "ipBlock" in peer:
                return True
            continue
        if "ipBlock" in peer:
            continue  # pod IPs behind an ipBlock are implementation-defined; the chart never relies on it
        if "podSelector" in peer and not selects(peer["podSelector"], other.labels):
            continue
        return True  # a namespaceSelector alone ({} = every namespace) or a matching podSelector
    return False


def port_matches(ports: list[dict[str, Any]] | None, port: int, target: Pod | None) -> bool:
    if not ports:
        return True
    for rule_port in ports:
        value = rule_port["port"]
        if isinstance(value, str):
            value = target.ports.get(value) if target else None
        if value == port:
            return True
    return False


def allowed(policies, direction: str, pod: Pod, other: Pod | None, port: int, target: Pod | None) -> bool:
    """Whether `pod`'s policies let traffic in `direction` ('ingress'/'egress') through (isolation rules)."""
    kind = direction.capitalize()
    selecting = [
        p
        for p in policies
        if selects(p["spec"]["podSelector"], pod.labels) and kind in p["spec"]["policyTypes"]
    ]
    if not selecting:
        return True  # not isolated in this direction
    peer_key = "from" if direction == "ingress" else "to"
    for policy in selecting:
        for rule in policy["spec"].get(direction, []):
            if peer_matches(rule.get(peer_key), other) and port_matches(rule.get("ports"), port, target):
                return True
    return False


def can_call(rendered, source: str, destination: str, port: int | str) -> bool:
    """Whether pod `source` may open `port` (a number or the destination's port name) on `destination`
    ("external" = outside the cluster, e.g. the Kubernetes API or an S3 service)."""
    pods = pods_of(rendered)
    policies = rendered.of_kind("NetworkPolicy")
    src = pods[source]
    dst = None if destination == "external" else pods[destination]
    number = dst.ports[port] if isinstance(port, str) else port
    return allowed(policies, "egress", src, dst, number, dst) and (
        dst is None or allowed(policies, "ingress", dst, src, number, dst)
    )


@pytest.mark.parametrize("profile", PROFILES)
def test_every_workload_has_its_own_policy(render, profile):
    rendered = render(profile)
    policies = rendered.of_kind("NetworkPolicy")
    deny = rendered.get("NetworkPolicy", "review-stack-default-deny")
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    for doc, _, labels in rendered.pods():
        own = [
            p
            for p in policies
            if p is not deny
            and selects(p["spec"]["podSelector"], labels)
            and "app.kubernetes.io/component" in p["spec"]["podSelector"]["matchLabels"]
        ]
        assert own, f"no NetworkPolicy of its own for {doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in WORKLOAD_KINDS:
            assert selects(deny["spec"]["podSelector"], labels), doc["metadata"]["name"]
    # the Jobs the controller creates carry no release label: their own policy isolates them
    job = pods_of(rendered)["controller-created-job"]
    assert any(selects(p["spec"]["podSelector"], job.labels) for p in policies)


GPU_BACKEND = {
    "default": "tgi",
    "single-gpu": "tgi",
    "multi-gpu": "tgi",
    "cpu-demo": "generation",
    "cpu-demo+web": "generation",
}


@pytest.mark.parametrize("profile", PROFILES)
def test_policies_allow_exactly_the_calls_the_stack_makes(render, profile):
    rendered = render(profile)
    backend = GPU_BACKEND[profile]
    services = ("dataprep", "training", "review", "evaluation")
    store_clients = (*services, backend, "training-job", "controller-created-job")
    for client in store_clients:
        assert can_call(rendered, client, "minio", "s3"), f"{client} → minio"
    assert can_call(rendered, "review", backend, "http")
    assert can_call(rendered, "training", "external", 443)  # the Kubernetes API
    assert can_call(rendered, "test", "review", "grpc")  # helm test
    for service in services:
        assert can_call(rendered, "test", service, "grpc") == (service == "review")
    # a multi-node run's pods reach each other on any port (rendezvous, NCCL)
    assert can_call(rendered, "controller-created-job", "controller-created-job", 29500)
    assert can_call(rendered, "training-job", "controller-created-job", 41234)

    denied = [
        ("dataprep", backend, "http"),
        ("evaluation", backend, "http"),
        ("review", "training", "grpc"),
        ("review", "external", 443),
        (backend, "review", "grpc"),
        (backend, "external", 443),  # the engines never reach a hub
        ("minio", "review", "grpc"),
        ("minio", "external", 443),
        ("dataprep", "external", 6443),
        ("controller-created-job", "review", "grpc"),
        ("controller-created-job", "external", 443),
        ("review", "minio", 9001),
        ("review", "training-job", 29500),
    ]
    for source, destination, port in denied:
        assert not can_call(rendered, source, destination, port), f"{source} → {destination}:{port} is open"


def test_clients_outside_the_release(render):
    """The APIs accept any client unless allowExternal=false; metrics only from networkPolicy.metricsFrom."""
    outsider = Pod("outsider", {"app": "notebook"})
    labelled = Pod("client", {"app": "notebook", "review-stack-client": "true"})
    for allow_external, expected in (("true", {outsider.name, labelled.name}), ("false", {labelled.name})):
        rendered = render(
            "default",
            f"networkPolicy.allowExternal={allow_external}",
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
        )
        pods = pods_of(rendered)
        policies = rendered.of_kind("NetworkPolicy")
        review = pods["review"]
        reached = {
            p.name for p in (outsider, labelled) if allowed(policies, "ingress", review, p, 50051, review)
        }
        assert reached == expected
        assert allowed(
            policies, "ingress", review, outsider, 9090, review
        )  # any pod of the monitoring namespace
        assert not allowed(policies, "ingress", pods["minio"], outsider, 9000, pods["minio"])
    no_metrics = render("default")
    review = pods_of(no_metrics)["review"]
    assert not allowed(no_metrics.of_kind("NetworkPolicy"), "ingress", review, outsider, 9090, review)


def test_egress_can_be_left_open_and_policies_switched_off(render):
    open_egress = render("default", "networkPolicy.egress.enabled=false")
    for policy in open_egress.of_kind("NetworkPolicy"):
        assert policy["spec"]["policyTypes"] == ["Ingress"] and "egress" not in policy["spec"]
    assert can_call(open_egress, "review", "external", 443)
    assert not render("default", "networkPolicy.enabled=false").of_kind("NetworkPolicy")


def test_policy_ports_name_real_ports(render):
    """A named port in a policy that no container declares silently matches nothing."""
    rendered = render(
        "multi-gpu",
        "metrics.enabled=true",
        "networkPolicy.metricsFrom[0].podSelector.matchLabels.app=prometheus",
    )
    pods = pods_of(rendered)
    for policy in rendered.of_kind("NetworkPolicy"):
        component = label_of(policy)
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                if isinstance(port["port"], str):
                    assert port["port"] in pods[component].ports, f"{policy['metadata']['name']}: {port}"


def egress_peers(policy) -> list[tuple[tuple, str]]:
    """(ports, peer) of each egress rule: ports as (port, protocol) pairs, the peer as the component its pod
    selector names, "external:<cidr>" for an ipBlock, or "any" for a rule without peers."""
    rules = []
    for rule in policy["spec"]["egress"]:
        ports = tuple((p["port"], p["protocol"]) for p in rule.get("ports", []))
        for peer in rule.get("to") or [{}]:
            if "podSelector" in peer:
                rules.append((ports, peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]))
            elif "ipBlock" in peer:
                rules.append((ports, f"external:{peer['ipBlock']['cidr']}"))
            else:
                rules.append((ports, "any"))
    return rules


DNS = ((53, "UDP"), (53, "TCP"))


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (
            (),
            {
                (DNS, "any"),
                (((9000, "TCP"),), "minio"),
                (((50051, "TCP"),), "review"),
                (((50051, "TCP"),), "evaluation"),
            },
        ),
        (
            ("web.evaluation.enabled=false",),
            {(DNS, "any"), (((9000, "TCP"),), "minio"), (((50051, "TCP"),), "review")},
        ),
        # an external S3: its port, at networkPolicy.externalS3To
        (
            ("minio.enabled=false", "s3.endpoint=https://s3.example.com", "s3.existingSecret=s3"),
            {
                (DNS, "any"),
                (((443, "TCP"),), "external:0.0.0.0/0"),
                (((50051, "TCP"),), "review"),
                (((50051, "TCP"),), "evaluation"),
            },
        ),
    ],
)
def test_the_web_page_calls_only_review_evaluation_the_store_and_dns(render, sets, expected):
    policy = render("cpu-demo+web", *sets).get("NetworkPolicy", "review-stack-web")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    rules = egress_peers(policy)
    assert set(rules) == expected and len(rules) == len(expected)


def test_web_policies_let_the_page_through_and_nothing_more(render):
    rendered = render("cpu-demo+web")
    for service in ("review", "evaluation"):
        assert can_call(rendered, "web", service, "grpc"), f"web → {service}"
    assert can_call(rendered, "web", "minio", "s3")
    assert can_call(rendered, "web", "external", 53)  # DNS
    for destination, port in (
        ("dataprep", "grpc"),
        ("training", "grpc"),
        ("generation", "http"),
        ("minio", 9001),
        ("external", 443),
        ("review", 9090),
    ):
        assert not can_call(rendered, "web", destination, port), f"web → {destination}:{port} is open"
    # the page calls the services on their own pods, and is called by no service
    for source in ("review", "evaluation", "generation", "dataprep", "minio"):
        assert not can_call(rendered, source, "web", "http"), f"{source} → web"
    # anyone may open the page by default
    pods = pods_of(rendered)
    outsider = Pod("browser", {"app": "ingress-nginx"})
    policies = rendered.of_kind("NetworkPolicy")
    assert allowed(policies, "ingress", pods["web"], outsider, 8080, pods["web"])
    # gRPC clients restricted to labelled pods: the page still gets through to the services it calls
    closed = render("cpu-demo+web", "networkPolicy.allowExternal=false")
    assert can_call(closed, "web", "review", "grpc") and can_call(closed, "web", "evaluation", "grpc")
    assert not can_call(closed, "web", "dataprep", "grpc")
    # without the page, the services admit no web pod
    off = render("cpu-demo", "networkPolicy.allowExternal=false")
    web_pod = Pod("web", {**pods["web"].labels})
    for service in ("review", "evaluation", "minio"):
        target = pods_of(off)[service]
        port = target.ports["s3" if service == "minio" else "grpc"]
        assert not allowed(off.of_kind("NetworkPolicy"), "ingress", target, web_pod, port, target), service
    # the release's Evaluation service admits the page only when the page calls it
    elsewhere = render(
        "cpu-demo+web", "networkPolicy.allowExternal=false", "web.evaluation.target=evaluation.other:50051"
    )
    assert not can_call(elsewhere, "web", "evaluation", "grpc")


def test_web_ingress_can_be_restricted_to_the_ingress_controller(render):
    rendered = render(
        "cpu-demo+web",
        "web.networkPolicy.from[0].namespaceSelector.matchLabels.name=ingress-nginx",
        "web.networkPolicy.from[0].podSelector.matchLabels.app=ingress-nginx",
    )
    web = pods_of(rendered)["web"]
    policies = rendered.of_kind("NetworkPolicy")
    rule = rendered.get("NetworkPolicy", "review-stack-web")["spec"]["ingress"]
    assert rule == [
        {
            "ports": [{"port": "http", "protocol": "TCP"}],
            "from": [
                {
                    "namespaceSelector": {"matchLabels": {"name": "ingress-nginx"}},
                    "podSelector": {"matchLabels": {"app": "ingress-nginx"}},
                }
            ],
        }
    ]
    controller = Pod("controller", {"app": "ingress-nginx"})
    notebook = Pod("notebook", {"app": "notebook"})
    assert allowed(policies, "ingress", web, controller, 8080, web)
    assert not allowed(policies, "ingress", web, notebook, 8080, web)
    assert not allowed(policies, "ingress", web, controller, 9090, web)
