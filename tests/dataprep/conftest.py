"""Data-prep fixtures: the bundled sample, and one full build of it shared by the tests that read it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reviewstack.dataprep.build import BuildResult, build_dataset
from reviewstack.dataprep.config import BuildConfig

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "neurips2025-sample"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


def copy_papers(destination: Path, paper_ids: list[str]) -> Path:
    """A source folder holding just these sample papers (and their reviews)."""
    for sub, suffix in (("papers", ".md"), ("reviews", ".json")):
        (destination / sub).mkdir(parents=True, exist_ok=True)
        for paper_id in paper_ids:
            shutil.copy(SAMPLE / sub / f"{paper_id}{suffix}", destination / sub / f"{paper_id}{suffix}")
    return destination


def sample_ids() -> list[str]:
    return sorted(p.stem for p in (SAMPLE / "papers").glob("*.md"))


@pytest.fixture(scope="session")
def sample_config(tmp_path_factory) -> BuildConfig:
    out = tmp_path_factory.mktemp("store")
    return BuildConfig(sources=[str(SAMPLE)], output=str(out), name="sample", paper_version="decision")


@pytest.fixture(scope="session")
def sample_build(sample_config) -> BuildResult:
    """The whole bundled sample, built once with the defaults (embedded distiller, Llama-3)."""
    return build_dataset(sample_config)
