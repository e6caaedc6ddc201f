"""Training fixtures: a tiny random Llama with the real Llama-3 tokenizer, and a small real dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reviewstack.common.tokenizer import default_tokenizer_dir
from reviewstack.dataprep.build import build_dataset
from reviewstack.dataprep.config import BuildConfig

from ..dataprep.conftest import copy_papers, sample_ids

TINY_CONTEXT = 512  # the tiny model's "pre-training" context; specs extend it by PI


def make_tiny_llama(directory: Path, context: int = TINY_CONTEXT) -> Path:
    """A randomly initialised Llama (2 layers, hidden 64) that shares Llama-3's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128_256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128009,
    )
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_tokenizer_dir() / name, directory / name)
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> str:
    """Six sample papers, cut to 384 + 256 tokens (fits the tiny model's 512 × 1.5 extended context)."""
    root = tmp_path_factory.mktemp("train-data")
    source = copy_papers(root / "src", sample_ids()[:6])
    result = build_dataset(
        BuildConfig(
            sources=[str(source)],
            output=str(root / "store"),
            name="tiny",
            paper_version="late",
            max_prompt_length=384,
            max_response_length=256,
            split=(0.6, 0.2, 0.2),
        )
    )
    return result.uri
