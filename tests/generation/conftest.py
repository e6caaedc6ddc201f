"""Without a GPU the Triton decode kernels run under Triton's interpreter; it must be on before they are
defined. The engine's "auto" choice never takes the interpreter, so only tests that ask for it use it.

Hypothesis keeps what it learns (example database off in these tests, but its constants cache) inside
pytest's cache folder, which git ignores, instead of a `.hypothesis/` folder in the work tree."""

import os
from pathlib import Path

import torch
from hypothesis.configuration import set_hypothesis_home_dir

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

set_hypothesis_home_dir(Path(__file__).resolve().parents[2] / ".pytest_cache" / "hypothesis")
