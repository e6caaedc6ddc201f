"""The contracts: generated code is what the protos say, never edited or committed, and covers the
four services of the design plus Operations."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "services" / "common" / "reviewstack" / "v1"


def test_generated_code_matches_the_protos(tmp_path):
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            "proto",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
    )
    fresh = sorted(p.name for p in (tmp_path / "reviewstack" / "v1").glob("*.py*"))
    assert fresh == sorted(p.name for p in GENERATED.glob("*.py*"))
    for name in fresh:
        assert filecmp.cmp(tmp_path / "reviewstack" / "v1" / name, GENERATED / name, shallow=False), (
            f"{name} is stale or was edited by hand: run `make proto`"
        )


def test_generated_code_is_not_committed():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", str(GENERATED)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert tracked == ""
    assert (
        subprocess.run(["git", "check-ignore", "-q", str(GENERATED / "common_pb2.py")], cwd=ROOT).returncode
        == 0
    )


def test_one_versioned_package_with_the_designs_services():
    from reviewstack.v1 import (
        common_pb2,
        dataprep_pb2,
        evaluation_pb2,
        operations_pb2,
        review_pb2,
        training_pb2,
    )

    services = {
        name
        for module in (dataprep_pb2, training_pb2, review_pb2, evaluation_pb2, operations_pb2)
        for name in module.DESCRIPTOR.services_by_name
    }
    assert services == {"DataPrep", "Training", "Review", "Evaluation", "Operations"}
    for module in (common_pb2, dataprep_pb2, operations_pb2):
        assert module.DESCRIPTOR.package == "reviewstack.v1"
    assert set(common_pb2.ArtifactRef.DESCRIPTOR.fields_by_name) == {"uri", "sha256", "size"}
    assert {"id", "state", "progress", "result", "error"} <= set(
        operations_pb2.Operation.DESCRIPTOR.fields_by_name
    )
    assert {"aspects", "schema", "text"} <= set(common_pb2.StructuredReview.DESCRIPTOR.fields_by_name)
