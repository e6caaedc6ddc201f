"""The engine's own forward and batching produce what transformers' `generate` produces."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from reviewstack.common.prompt import PromptBuilder
from reviewstack.common.tokenizer import load_tokenizer
from reviewstack.generation.engine import Engine, Request
from reviewstack.generation.runner import DecoderRunner
from reviewstack.generation.sampling import SamplingSettings

from ..refuser import paper_text
from .conftest import generate_together


def _reference(model, ids: list[int], new: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False, pad_token_id=0)
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def random_llama():
    """Random weights with grouped-query heads and Position Interpolation (linear RoPE, factor 2)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10_000.0},
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_prefill_and_decode_match_generate_with_pi_scaling(random_llama, kernels):
    """Both decode paths: eager PyTorch, and the Triton kernels (under the interpreter without a GPU)."""
    if kernels == "triton":
        pytest.importorskip("triton")
    new = 20 if kernels == "torch" else 8  # the interpreter takes ~2 s a step
    runner = DecoderRunner(random_llama, max_batch=3, max_total_tokens=320, kernels=kernels)
    assert runner.fused == (kernels == "triton")
    rng = random.Random(0)
    prompts = [[rng.randrange(512) for _ in range(n)] for n in (5, 300, 37)]  # past the 256 of pre-training
    expected = [_reference(random_llama, p, new) for p in prompts]
    # continuous batching: the three requests sit at different positions in one decode step
    last, positions, outputs = [], [], [[] for _ in prompts]
    for slot, prompt in enumerate(prompts):
        token = int(runner.prefill(slot, prompt).argmax())
        outputs[slot].append(token)
        last.append(token)
        positions.append(len(prompt))
    for _ in range(new - 1):
        logits = runner.decode([0, 1, 2], last, positions)
        last = logits.argmax(-1).tolist()
        for slot, token in enumerate(last):
            outputs[slot].append(token)
        positions = [p + 1 for p in positions]
    assert outputs == expected


def test_a_slot_reused_after_a_longer_request_forgets_it(random_llama):
    runner = DecoderRunner(random_llama, max_batch=1, max_total_tokens=300)
    long_prompt, short_prompt = list(range(1, 250)), [7, 8, 9]
    runner.prefill(0, long_prompt)
    first = int(runner.prefill(0, short_prompt).argmax())
    logits = runner.decode([0], [first], [len(short_prompt)])
    assert [first, int(logits[0].argmax())] == _reference(random_llama, short_prompt, 2)


def test_auto_leaves_the_interpreter_alone_and_triton_says_why_it_cannot_run(random_llama, monkeypatch):
    assert not DecoderRunner(random_llama, max_batch=1, max_total_tokens=16).fused  # CPU: eager
    monkeypatch.setattr(random_llama.config, "hidden_act", "gelu")
    with pytest.raises(ValueError, match=r"Triton decode kernels cannot be used: .*'gelu'"):
        DecoderRunner(random_llama, max_batch=1, max_total_tokens=16, kernels="triton")


def test_unsupported_architectures_are_refused_by_name(random_llama):
    random_llama.config.model_type = "gpt_neox"
    try:
        with pytest.raises(ValueError, match=r"gpt_neox.*not supported.*TGI or vLLM"):
            DecoderRunner(random_llama, max_batch=1, max_total_tokens=16)
    finally:
        random_llama.config.model_type = "llama"


def test_engine_serves_concurrent_requests_as_generate_does_one_by_one(refuser_model):
    tokenizer = load_tokenizer(refuser_model).tokenizer
    model = AutoModelForCausalLM.from_pretrained(refuser_model)
    builder = PromptBuilder(load_tokenizer(refuser_model), max_prompt_length=512)
    rng = random.Random(3)
    texts = [builder.build(paper_text(rng)).text for _ in range(3)]
    prompts = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    prompts[1] = prompts[1][:-40] + prompts[2][-40:]  # another length
    expected = [_reference(model, p, 60) for p in prompts]
    engine = Engine(DecoderRunner(model, max_batch=2, max_total_tokens=1024), tokenizer)
    engine.start()
    try:  # 3 requests, 2 slots: one waits
        got = generate_together(engine, [Request(p, 60, SamplingSettings()) for p in prompts])
    finally:
        engine.stop()
    assert [g[: len(e)] for g, e in zip(got, expected, strict=True)] == expected
