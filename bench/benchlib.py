"""What the benchmarks share: the Llama-3-8B shape with random weights, and where a result came from."""

from __future__ import annotations

import os
import subprocess
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _installed
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LLAMA3_8B = {
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
TINY = {
    **LLAMA3_8B,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def make_random_model(directory: Path, tiny: bool) -> None:
    """A Llama-3-8B-shaped checkpoint with random weights (no hub here); bf16 on the GPU."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if (directory / "config.json").exists():
        return
    config = LlamaConfig(**(TINY if tiny else LLAMA3_8B))
    device = "cpu" if tiny else "cuda"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory, max_shard_size="5GB")


def card() -> str:
    if not torch.cuda.is_available():
        return "cpu"
    return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"


def commit() -> str:
    """REVIEWSTACK_COMMIT when set, else the GPU bundle's (a copy of the tree may carry no .git, or a
    stale one), else git's HEAD."""
    if os.environ.get("REVIEWSTACK_COMMIT"):
        return os.environ["REVIEWSTACK_COMMIT"]
    bundled = ROOT / ".gpu" / "bundle" / "COMMIT"
    if bundled.is_file():
        return bundled.read_text().replace("\n", "")
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def version(package: str) -> str | None:
    try:
        return _installed(package.replace("_", "-"))
    except PackageNotFoundError:
        return None
