"""images/build.sh checks the engine's disk before it builds: running out half-way fails inside a build
log and leaves every other process on that disk failing too (a CI run once did)."""

from __future__ import annotations

import os
import subprocess

import pytest

from .conftest import DOCKER, REPO

pytestmark = pytest.mark.slow  # needs the Docker engine the container test uses


def _build(tmp_path, min_free_gb: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DOCKER": DOCKER,
        "REVIEWSTACK_BUILD_MIN_FREE_GB": min_free_gb,
        "REVIEWSTACK_BUILD_LOGS": str(tmp_path / "logs"),
    }
    return subprocess.run(
        [str(REPO / "images" / "build.sh"), "review"], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_build_without_room_stops_before_building_and_says_what_to_do(docker_engine, tmp_path):
    result = _build(tmp_path, "1000000")  # 1 PB: more than any disk here has
    assert result.returncode == 1, result.stderr
    assert "GB free under" in result.stderr and "this build needs about" in result.stderr
    assert "REVIEWSTACK_BUILD_MIN_FREE_GB=0" in result.stderr  # the way out is named
    assert not list((tmp_path / "logs").glob("*.log"))  # no build was started
