"""Helm and the rendered chart, for the chart tests: the real Helm binary (`charts/tools/install-helm.py`
puts it in .venv/bin), `helm template` output parsed into plain dicts, and small views over it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "review-stack"
BIN = Path(sys.executable).parent
INSTALL_HINT = f"{BIN / 'python'} charts/tools/install-helm.py (or `make helm`), or set HELM=/path/to/helm"
RELEASE = "review-stack"
NAMESPACE = "review-stack"
# Kubernetes versions the manifests are validated against: the chart's floor-ish (as tests/training) and
# the newest schemas kubernetes-validate ships
K8S_VERSIONS = ("1.30.0", "1.37.0")
PROFILES = {
    "default": (),
    "cpu-demo": (CHART / "values" / "cpu-demo.yaml",),
    "single-gpu": (CHART / "values" / "single-gpu.yaml",),
    "multi-gpu": (CHART / "values" / "multi-gpu.yaml",),
    # web.yaml goes on top of a hardware profile: the demo with the web page
    "cpu-demo+web": (CHART / "values" / "cpu-demo.yaml", CHART / "values" / "web.yaml"),
}
WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def helm_path() -> Path:
    """HELM when set, else the environment's own bin/helm."""
    return Path(os.environ.get("HELM") or BIN / "helm")


def run_helm(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(helm_path()), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def value_args(profile: str = "default", sets: tuple[str, ...] = ()) -> list[str]:
    args: list[str] = []
    for path in PROFILES[profile]:
        args += ["-f", str(path)]
    for item in sets:
        args += ["--set", item]
    return args


def template(profile: str = "default", sets: tuple[str, ...] = ()) -> str:
    """`helm template` of the chart, as YAML text (fails the test when Helm refuses)."""
    return run_helm(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *value_args(profile, sets), check=True
    ).stdout


@dataclass
class Rendered:
    """The objects one `helm template` produced."""

    docs: list[dict[str, Any]]
    text: str

    @classmethod
    def parse(cls, text: str) -> Rendered:
        return cls([d for d in yaml.safe_load_all(text) if d], text)

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] in kinds]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
        return found[0]

    def pods(self) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, str]]]:
        """(object, pod spec, pod labels) of everything that makes pods."""
        for doc in self.docs:
            kind = doc["kind"]
            if kind in (*WORKLOAD_KINDS, "Job"):
                template = doc["spec"]["template"]
            elif kind == "CronJob":
                template = doc["spec"]["jobTemplate"]["spec"]["template"]
            elif kind == "Pod":
                template = doc
            else:
                continue
            yield doc, template["spec"], template["metadata"].get("labels", {})

    def containers(self, init: bool = True) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(object, container) of every container, init containers included unless `init` is False."""
        for doc, pod, _ in self.pods():
            for container in pod["containers"] + (pod.get("initContainers", []) if init else []):
                yield doc, container


def label_of(doc: dict[str, Any], key: str = "app.kubernetes.io/component") -> str:
    return doc["metadata"]["labels"].get(key, "")


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name → literal value, or the valueFrom dict."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def container(rendered: Rendered, kind: str, name: str, container_name: str) -> dict[str, Any]:
    doc = rendered.get(kind, name)
    pod = doc["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == container_name)
