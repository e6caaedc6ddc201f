"""The transformers adapter: identity at λ = 0, exact lowering at λ > 0, and fewer empty aspects from a
model trained to refuse."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, LogitsProcessorList

from reviewstack.common.prompt import PromptBuilder
from reviewstack.common.review_format import parse
from reviewstack.common.tokenizer import load_tokenizer
from reviewstack.penalty.core import PenaltyTable, RowTracker
from reviewstack.penalty.hf import RefusalPenaltyLogitsProcessor
from reviewstack.penalty.torch_ops import lower_logits

from ..refuser import paper_text

VOCAB = ["1", ".", " H", "\n", "-", " <", "No", " related", " terms", ">", " The"]


def _ids(*pieces: str) -> list[int]:
    return [VOCAB.index(p) for p in pieces]


def test_zero_penalty_is_the_identity():
    processor = RefusalPenaltyLogitsProcessor(PenaltyTable(VOCAB), penalty=0.0)
    scores = torch.randn(2, len(VOCAB))
    before = scores.clone()
    out = processor(torch.tensor([_ids("1", ".", " H", "\n", "-")] * 2), scores)
    assert out is scores and torch.equal(out, before)


def test_positive_penalty_lowers_exactly_the_continuing_tokens_of_each_row():
    processor = RefusalPenaltyLogitsProcessor(PenaltyTable(VOCAB), penalty=2.5)
    prompt = torch.tensor([_ids(" The"), _ids(" The")])
    processor(prompt, torch.zeros(2, len(VOCAB)))  # first call: learns the prompt length
    rows = torch.tensor([_ids(" The", "1", ".", " H", "\n", "-"), _ids(" The", "1", ".", " H", "\n", " The")])
    scores = processor(rows, torch.zeros(2, len(VOCAB)))
    expected = torch.zeros(2, len(VOCAB))
    expected[0, VOCAB.index(" <")] = -2.5  # row 0: "- " then " <" continues the refusal
    assert torch.equal(scores, expected)  # row 1 wrote " The": untouched
    with pytest.raises(ValueError, match=">= 0"):
        RefusalPenaltyLogitsProcessor(PenaltyTable(VOCAB), penalty=-1)


def test_lowering_skips_ids_beyond_the_models_vocabulary():
    scores = torch.zeros(1, 4)
    lower_logits(scores, [0], [(1, 3, 7)], [1.5])
    assert scores.tolist() == [[0.0, -1.5, 0.0, -1.5]]


def test_tracker_and_processor_agree_token_by_token():
    table = PenaltyTable(VOCAB)
    text = _ids(" The", "1", ".", " H", "\n", "-", " <", "No", " related", " terms", ">", "\n")
    processor = RefusalPenaltyLogitsProcessor(table, penalty=1.0)
    tracker = RowTracker(table)  # fed the generated tokens only: text[0] is the prompt
    processor(torch.tensor([text[:1]]), torch.zeros(1, len(VOCAB)))
    for n in range(2, len(text) + 1):
        scores = processor(torch.tensor([text[:n]]), torch.zeros(1, len(VOCAB)))
        tracker.advance(text[n - 1])
        lowered = {i for i, v in enumerate(scores[0].tolist()) if v < 0}
        assert lowered == set(tracker.penalised())


def generate(model, tokenizer, prompt: str, penalty: float, table: PenaltyTable) -> str:
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(
        **inputs,
        max_new_tokens=400,
        do_sample=False,
        logits_processor=LogitsProcessorList([RefusalPenaltyLogitsProcessor(table, penalty)]),
        pad_token_id=tokenizer.eos_token_id,
    )
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_a_model_trained_to_refuse_leaves_fewer_aspects_empty_under_the_penalty(refuser_model):
    tokenizer = load_tokenizer(refuser_model)
    model = AutoModelForCausalLM.from_pretrained(refuser_model)
    table = PenaltyTable(
        [*RefusalPenaltyLogitsProcessor.from_tokenizer(tokenizer.tokenizer, 0).table.surfaces]
    )
    builder = PromptBuilder(tokenizer, max_prompt_length=512)
    rng = random.Random(1)
    empty = {0.0: 0, 3.0: 0}
    for _ in range(3):
        prompt = builder.build(paper_text(rng)).text
        for penalty in empty:
            review = parse(generate(model, tokenizer.tokenizer, prompt, penalty, table), strict=False)
            empty[penalty] += len(review.empty_aspects)
    assert empty[0.0] >= 18  # the model refuses almost everywhere on its own
    assert empty[3.0] <= empty[0.0] // 3
