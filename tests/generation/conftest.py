"""Without a GPU the Triton decode kernels run under Triton's interpreter; it must be on before they are
defined. The engine's "auto" choice never takes the interpreter, so only tests that ask for it use it."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
