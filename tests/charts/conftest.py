"""Chart fixtures: a real Helm (missing Helm fails every chart test, it never skips them) and cached
renders of the chart per profile and `--set` overrides."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from .helm import INSTALL_HINT, Rendered, helm_path, run_helm, template


@pytest.fixture(scope="session")
def helm() -> str:
    path = helm_path()
    if not path.is_file():
        pytest.fail(f"no Helm at {path}: install it with {INSTALL_HINT}", pytrace=False)
    result = run_helm("version", "--short")
    if result.returncode != 0 or not result.stdout.startswith("v3."):
        pytest.fail(f"{path} is not a working Helm 3 ({result.stdout}{result.stderr})", pytrace=False)
    return result.stdout.strip()


@pytest.fixture(scope="session")
def render(helm) -> Callable[..., Rendered]:
    """render(profile="default", *sets) → the parsed `helm template` output (cached)."""

    @functools.cache
    def _render(profile: str = "default", *sets: str) -> Rendered:
        return Rendered.parse(template(profile, sets))

    return _render
