"""Training components on tiny tensors: Position Interpolation, labels, the response-only loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from reviewstack.common.errors import InvalidArgument
from reviewstack.common.review_format import parse
from reviewstack.common.tokenizer import load_tokenizer
from reviewstack.trainjob.data import IGNORE_INDEX, EpochSampler, ExampleBuilder, collate, open_dataset
from reviewstack.trainjob.loss import ResponseLoss
from reviewstack.trainjob.rope import apply_position_interpolation, interpolation_factor, original_context


def _config(context: int = 8192) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=context,
    )


def test_position_interpolation_really_interpolates_positions():
    plain, scaled = _config(), _config()
    factor = interpolation_factor(scaled, target_context=12_288)
    assert factor == 1.5
    apply_position_interpolation(scaled, factor)
    assert scaled.rope_parameters["rope_type"] == "linear" and scaled.rope_parameters["factor"] == 1.5
    assert scaled.max_position_embeddings == 12_288 and original_context(scaled) == 8192
    x = torch.zeros(1, 1, 16)
    positions = torch.tensor([[0, 3, 6, 9, 12_000]])
    cos_scaled, sin_scaled = LlamaRotaryEmbedding(scaled)(x, positions)
    cos_plain, sin_plain = LlamaRotaryEmbedding(plain)(x, torch.tensor([[0, 2, 4, 6, 8_000]]))
    # position p under factor 1.5 is exactly position p / 1.5 of the original model
    torch.testing.assert_close(cos_scaled, cos_plain, atol=1e-3, rtol=0)  # fp32 angles near 8,000 rad
    torch.testing.assert_close(sin_scaled, sin_plain, atol=1e-3, rtol=0)
    cos_unscaled, _ = LlamaRotaryEmbedding(plain)(x, positions)
    assert not torch.allclose(cos_scaled[0, 1], cos_unscaled[0, 1])


def test_position_interpolation_survives_a_save_and_reload(tmp_path):
    config = _config()
    apply_position_interpolation(config, 1.5)
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert reloaded.rope_parameters["rope_type"] == "linear" and reloaded.rope_parameters["factor"] == 1.5
    apply_position_interpolation(reloaded, interpolation_factor(reloaded, 12_288))  # idempotent
    assert reloaded.rope_parameters["factor"] == 1.5 and reloaded.max_position_embeddings == 12_288


def test_a_factor_below_one_is_refused():
    with pytest.raises(InvalidArgument, match=r"factor 0\.5"):
        interpolation_factor(_config(), target_context=4096)


def test_examples_put_labels_on_the_assistant_turn_only(small_dataset):
    dataset = open_dataset(small_dataset)
    tokenizer = load_tokenizer()
    builder = ExampleBuilder(tokenizer, dataset.schema, max_prompt_length=384, max_response_length=256)
    example = builder(dataset.records["train"][0])
    first = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    prompt_text = tokenizer.tokenizer.decode(example.input_ids[:first])
    assert prompt_text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert first <= 384
    response = tokenizer.tokenizer.decode(example.labels[first:])
    assert response.startswith("1. How to evaluate the idea of the paper")
    assert response.endswith("<|eot_id|>")  # the model learns to stop
    assert all(label != IGNORE_INDEX for label in example.labels[first:])
    assert example.response_tokens <= 256


def test_a_run_with_a_shorter_response_budget_still_learns_every_aspect_and_the_end(small_dataset):
    """A CPU-sized run cuts responses far below the dataset's budget: the target is refitted (fewer items,
    every heading kept), never cut at the tail, which would teach the first aspects only and no stop."""
    dataset = open_dataset(small_dataset)
    tokenizer = load_tokenizer()
    record = dataset.records["train"][0]
    assert tokenizer.count(record["response"]) > 180
    builder = ExampleBuilder(tokenizer, dataset.schema, max_prompt_length=384, max_response_length=180)
    example = builder(record)
    assert example.response_tokens <= 180
    first = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    response = tokenizer.tokenizer.decode(example.labels[first:])
    assert response.endswith("<|eot_id|>")
    parsed = parse(response.removesuffix("<|eot_id|>"), dataset.schema, strict=True)
    assert list(parsed.aspects) == list(dataset.schema.keys)
    assert not parsed.warnings
    source = {item for items in record["aspects"].values() for item in items}
    kept = [item for items in parsed.aspects.values() for item in items]
    assert all(item in source or item.endswith("…") for item in kept)


def test_response_loss_equals_cross_entropy_over_full_logits():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(_config(512))
    ids = torch.randint(0, 256, (2, 12))
    labels = ids.clone()
    labels[:, :7] = IGNORE_INDEX
    labels[1, 10:] = IGNORE_INDEX  # padding
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    summed, n = ResponseLoss()(model, batch)
    logits = model(input_ids=ids).logits[:, :-1]
    reference = F.cross_entropy(
        logits.reshape(-1, 256), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    assert n == int((labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(summed, reference, rtol=1e-5, atol=1e-4)


def test_collate_masks_padding():
    from reviewstack.trainjob.data import Example

    batch = collate([Example("a", [1, 2, 3], [IGNORE_INDEX, 2, 3]), Example("b", [4], [4])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"][1].tolist() == [4, IGNORE_INDEX, IGNORE_INDEX]


def test_sampler_resumes_at_the_same_position_and_shards_ranks():
    full = EpochSampler(10, micro_batch_size=2, seed=3)
    stream = iter(full)
    seen = [next(stream) for _ in range(7)]  # crosses into the second epoch
    resumed = EpochSampler(10, micro_batch_size=2, seed=3)
    fresh = iter(EpochSampler(10, micro_batch_size=2, seed=3))
    [next(fresh) for _ in range(4)]
    resumed.load_state_dict({"epoch": 0, "position": 4, "n": 10})
    assert [next(iter(resumed)) for _ in range(1)] == [seen[4]]
    assert full.state_dict() == {"epoch": 1, "position": 2, "n": 10}
    rank0 = [b for _, b in zip(range(2), EpochSampler(8, 2, 0, rank=0, world_size=2), strict=False)]
    rank1 = [b for _, b in zip(range(2), EpochSampler(8, 2, 0, rank=1, world_size=2), strict=False)]
    assert not {i for batch in rank0 for i in batch} & {i for batch in rank1 for i in batch}
    with pytest.raises(InvalidArgument, match="same dataset"):
        resumed.load_state_dict({"epoch": 0, "position": 1, "n": 11})


def test_the_measured_peak_is_set_beside_the_prediction_and_an_underestimate_is_flagged(caplog):
    """layout.check, which every run on GPUs ends with (the peaks come from every rank)."""
    from reviewstack.common.runspec import TrainSpec
    from reviewstack.common.train_memory import ModelShape, Topology, plan
    from reviewstack.trainjob import layout

    spec = TrainSpec(run_id="m", dataset="d", base_model="b", output="o", device="cuda")
    shape = ModelShape.from_config(LlamaConfig(num_hidden_layers=2, vocab_size=1000).to_dict())
    chosen = plan(shape, spec, Topology(2, 2, 79.1), liger=True)
    predicted = chosen.chosen_prediction.total
    assert layout.check(chosen, None) is None  # CPUs: nothing measured
    close = layout.check(chosen, [predicted * 0.97, predicted * 0.9])
    assert close["peak_gib"] == predicted * 0.97 and close["error"] == pytest.approx(-0.03, abs=1e-3)
    assert close["peak_gib_per_gpu"] == [predicted * 0.97, predicted * 0.9]
    assert "underestimated" not in caplog.text
    over = layout.check(chosen, [predicted * 1.2, predicted])
    assert over["error"] == pytest.approx(0.2, abs=1e-3)
    assert "the memory model underestimated this run" in caplog.text
