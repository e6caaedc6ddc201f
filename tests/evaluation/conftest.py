"""Evaluation fixtures: the real data archives of ../shared/data, each unpacked once per test session."""

from __future__ import annotations

import os
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

SHARED_DATA = Path(
    os.environ.get("REVIEWSTACK_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)


@pytest.fixture(scope="session")
def shared_archive(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`shared_archive("marg-alignments-dev")` → the folder the archive unpacks to (skips when the archive
    is not there: REVIEWSTACK_SHARED_DATA points elsewhere)."""
    unpacked: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in unpacked:
            archive = SHARED_DATA / f"{name}.tar.gz"
            if not archive.exists():
                pytest.skip(f"{archive} is not there (set REVIEWSTACK_SHARED_DATA to its folder)")
            target = tmp_path_factory.mktemp(name)
            with tarfile.open(archive) as tar:
                tar.extractall(target, filter="data")
            unpacked[name] = target / name if (target / name).is_dir() else target
        return unpacked[name]

    return get


BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="session")
def bench() -> ModuleType:
    """bench/matcher_agreement.py, the one implementation of the matcher protocols the tests check."""
    sys.path.insert(0, str(BENCH))
    try:
        import matcher_agreement
    finally:
        sys.path.remove(str(BENCH))
    return matcher_agreement


@pytest.fixture(scope="session")
def marg_units(shared_archive: Callable[[str], Path], bench: ModuleType) -> list:
    """MARG's units in the evaluation's frame (all of a paper's human comments in one matcher call)."""
    return bench.load_units(shared_archive("marg-alignments-dev"), "paper")
