"""The batched sampler against transformers' own logits processors, the reference for TGI's semantics.

Each row of a batch carries its own settings; the sampler applies every stage to the whole batch and
keeps the repetition penalty's seen tokens on the device. What it computes must be what transformers'
per-sequence processors compute for that row alone.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from reviewstack.common.tokenizer import load_tokenizer
from reviewstack.generation.engine import Engine, Request
from reviewstack.generation.runner import DecoderRunner
from reviewstack.generation.sampling import Choice, SamplingSettings, SlotSampler

from .conftest import generate_together

CPU = torch.device("cpu")


def _logits(rows: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 4


def test_repetition_penalty_matches_transformers_over_several_steps():
    """Rows with different penalties (one without) in one batch; each step's penalised logits are
    transformers' for that row's prompt plus the tokens chosen so far, which the sampler only ever saw on
    the device."""
    penalties = [1.3, 1.0, 0.7, 2.5]
    prompts = [[3, 3, 17, 40], [5, 6], [0, 63, 12], [1]]
    sampler = SlotSampler(6, 64, CPU)
    slots = [4, 0, 2, 5]  # not the batch order: rows find their slots' state
    for slot, penalty, prompt in zip(slots, penalties, prompts, strict=True):
        sampler.start(slot, SamplingSettings(repetition_penalty=penalty), prompt)
    sequences = [list(p) for p in prompts]
    for step in range(12):
        raw = _logits(4, 64, step)
        expected = torch.stack(
            [
                RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([seq]), raw[i : i + 1].clone())[0]
                for i, (penalty, seq) in enumerate(zip(penalties, sequences, strict=True))
            ]
        )
        logits = raw.clone()
        choices = sampler.choose(slots, logits)
        torch.testing.assert_close(logits, expected, rtol=0, atol=0)
        for seq, choice in zip(sequences, choices, strict=True):
            assert isinstance(choice, Choice)
            assert choice.token == int(expected[sequences.index(seq)].argmax())
            seq.append(choice.token)


def test_a_new_request_in_a_slot_starts_from_its_own_prompt():
    sampler = SlotSampler(1, 16, CPU)
    sampler.start(0, SamplingSettings(repetition_penalty=2.0), [1, 2, 3])
    sampler.choose([0], _logits(1, 16, 0))
    sampler.start(0, SamplingSettings(repetition_penalty=2.0), [7])
    logits = torch.ones(1, 16)
    sampler.choose([0], logits)
    assert logits[0].tolist() == [0.5 if i == 7 else 1.0 for i in range(16)]


@pytest.mark.parametrize(
    "settings",
    [
        SamplingSettings(do_sample=True, temperature=0.7, top_p=0.9),
        SamplingSettings(do_sample=True, temperature=1.3, top_k=5),
        SamplingSettings(do_sample=True, temperature=0.5, top_k=10, top_p=0.6),
        SamplingSettings(do_sample=True),
    ],
    ids=["t0.7-p0.9", "t1.3-k5", "t0.5-k10-p0.6", "plain"],
)
def test_sampling_draws_from_transformers_warped_distribution(settings):
    """Many seeded rows of one batch: tokens the warpers remove are never drawn, and the frequencies of
    the others are the warped softmax's (a chi-square test at a threshold no correct sampler misses)."""
    vocab, slots, steps = 24, 64, 60
    raw = _logits(1, vocab, 7)[0]
    warped = raw[None].clone()
    for warper in (
        TemperatureLogitsWarper(settings.temperature),
        TopKLogitsWarper(settings.top_k) if settings.top_k else None,
        TopPLogitsWarper(settings.top_p) if settings.top_p < 1 else None,
    ):
        if warper is not None:
            warped = warper(torch.zeros(1, 1, dtype=torch.long), warped)
    expected = warped[0].softmax(-1)
    sampler = SlotSampler(slots, vocab, CPU)
    for slot in range(slots):
        sampler.start(slot, SamplingSettings(**{**settings.__dict__, "seed": slot}), [])
    counts = torch.zeros(vocab)
    for _ in range(steps):
        for choice in sampler.choose(list(range(slots)), raw.repeat(slots, 1)):
            assert isinstance(choice, Choice)
            counts[choice.token] += 1
    assert counts[expected == 0].sum() == 0, "a token the warpers remove was drawn"
    draws = slots * steps
    kept = expected > 0
    chi2 = float(((counts[kept] - draws * expected[kept]) ** 2 / (draws * expected[kept])).sum())
    degrees = int(kept.sum()) - 1
    assert chi2 < degrees + 6 * (2 * degrees) ** 0.5 + 10, (chi2, degrees)  # far beyond p = 1e-6


def test_a_seeded_row_draws_the_same_tokens_whatever_else_is_in_the_batch():
    alone, crowded = SlotSampler(1, 50, CPU), SlotSampler(4, 50, CPU)
    settings = SamplingSettings(do_sample=True, temperature=1.5, top_p=0.95, repetition_penalty=1.2, seed=42)
    alone.start(0, settings, [1, 2])
    crowded.start(2, settings, [1, 2])
    for slot in (0, 1, 3):
        crowded.start(slot, SamplingSettings(do_sample=slot != 1, top_k=3, seed=slot), [slot])
    picked_alone, picked_crowded = [], []
    for step in range(30):
        raw = _logits(4, 50, step)
        picked_alone.append(alone.choose([0], raw[2:3].clone())[0].token)
        picked_crowded.append(crowded.choose([3, 1, 2, 0], raw[[0, 1, 2, 3]].clone())[2].token)
    assert picked_alone == picked_crowded


def test_a_row_with_an_impossible_temperature_fails_and_its_neighbours_do_not():
    sampler = SlotSampler(2, 16, CPU)
    sampler.start(0, SamplingSettings(do_sample=True, temperature=float("nan"), seed=1), [])
    sampler.start(1, SamplingSettings(do_sample=True, top_p=0.5, seed=2), [])
    failed, fine = sampler.choose([0, 1], _logits(2, 16, 0))
    assert "sampling failed" in str(failed) and isinstance(fine, Choice)


def test_the_engine_with_a_repetition_penalty_writes_what_generate_writes(refuser_model):
    """End to end: the engine's device-side penalty over prompt and generated tokens, two requests
    batched, against transformers' `generate(repetition_penalty=…)` one at a time."""
    tokenizer = load_tokenizer(refuser_model).tokenizer
    model = AutoModelForCausalLM.from_pretrained(refuser_model).eval()
    prompts = [tokenizer.encode(text) for text in ("The method is", "Weaknesses: the paper")]
    expected = []
    for prompt in prompts:
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=24, do_sample=False, repetition_penalty=1.3, pad_token_id=0
        )
        expected.append(out[0, len(prompt) :].tolist())
    engine = Engine(DecoderRunner(model, max_batch=2, max_total_tokens=128), tokenizer)
    engine.start()
    try:
        got = generate_together(
            engine, [Request(p, 24, SamplingSettings(repetition_penalty=1.3)) for p in prompts]
        )
    finally:
        engine.stop()
    assert [g[: len(e)] for g, e in zip(got, expected, strict=True)] == expected
