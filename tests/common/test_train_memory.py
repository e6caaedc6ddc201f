"""The memory model behind `layout: auto`: its parameter counts against transformers' and PEFT's own,
its predictions against peaks measured on GPUs (bench/results/train_memory.json), and the layout it
picks where the answer is known from the arithmetic."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from reviewstack.common.errors import FailedPrecondition, InvalidArgument
from reviewstack.common.runspec import ALL_PROJECTIONS, TrainSpec
from reviewstack.common.train_memory import LAYOUTS, SPEED_ORDER, ModelShape, Topology, plan, predict

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import LLAMA3_8B  # noqa: E402  (the benches' Llama-3-8B shape: one copy of it)

LLAMA3_70B = {**LLAMA3_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
              "num_attention_heads": 64}  # fmt: skip
H100 = 79.1  # GiB, as torch reports an 80 GB card


def _spec(**overrides) -> TrainSpec:
    """The method's run: 11,138 + 1,150 tokens, LoRA r=16 on every projection, on GPUs."""
    fields = {"run_id": "m", "dataset": "d", "base_model": "b", "output": "o", "device": "cuda",
              "max_prompt_length": 11_138, "max_response_length": 1_150, **overrides}  # fmt: skip
    return TrainSpec(**fields)


def _auto(config: dict, gpus: int, per_node: int | None = None, **spec) -> str | None:
    topology = Topology(gpus, per_node or gpus, H100)
    return plan(ModelShape.from_config(config), _spec(**spec), topology, liger=True, strict=False).chosen


@pytest.mark.parametrize("config", [LLAMA3_8B, LLAMA3_70B, {**LLAMA3_8B, "tie_word_embeddings": True}])
def test_parameter_count_is_transformers(config):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**config))
    assert ModelShape.from_config(config).parameters == sum(p.numel() for p in model.parameters())


def test_lora_count_is_pefts():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = {**LLAMA3_8B, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 3,
              "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 1000}  # fmt: skip
    for targets in (list(ALL_PROJECTIONS), ["q_proj", "v_proj"], ["down_proj"]):
        with torch.device("meta"):
            model = get_peft_model(
                LlamaForCausalLM(LlamaConfig(**config)), LoraConfig(r=8, target_modules=targets)
            )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert ModelShape.from_config(config).lora_parameters(8, targets) == trainable, targets


def test_predictions_are_within_a_tenth_of_measured_peaks():
    """Every row a GPU run measured: the layouts (and methods) a lent machine could run."""
    measured = json.loads((ROOT / "bench" / "results" / "train_memory.json").read_text())
    rows = [r for r in measured["rows"] if "peak_gib" in r and "predicted_peak_gib" in r]
    assert {r["layout"] for r in rows} >= {"single", "zero3", "zero3-replicated"}
    for row in rows:
        assert row["peak_gib"] > 0, row["variant"]
        assert abs(row["peak_gib"] / row["predicted_peak_gib"] - 1) <= 0.10, row


def test_the_layouts_memory_orders_as_their_sharding():
    """Per GPU on 2 GPUs: sharded < node shard < whole on every GPU; replicated costs 1 + 1/N weights."""
    shape, spec = ModelShape.from_config(LLAMA3_8B), _spec()
    two = {name: predict(shape, spec, name, Topology(4, 2, H100), liger=True) for name in LAYOUTS}
    assert two["zero3"].total < two["zero3-hpz"].total < two["zero3-replicated"].total
    bf16_weights = (shape.parameters + shape.lora_parameters(16, list(ALL_PROJECTIONS))) * 2 / 2**30
    assert two["zero3-replicated"].weights == pytest.approx(bf16_weights * 1.25)
    assert two["zero3"].weights == pytest.approx(bf16_weights / 4)
    assert two["zero3-hpz"].weights == pytest.approx(bf16_weights * (1 / 4 + 1 / 2))


@pytest.mark.parametrize(
    ("config", "gpus", "per_node", "spec", "expected"),
    [
        (LLAMA3_8B, 1, 1, {}, "single"),  # one GPU: no DeepSpeed
        (LLAMA3_8B, 2, 2, {}, "zero3-replicated"),  # the 16 GB base fits whole on each
        (LLAMA3_8B, 4, 4, {}, "zero3-replicated"),
        (LLAMA3_8B, 2, 2, {"method": "full"}, None),  # 96 GB of fp32 AdamW state over two: no
        (LLAMA3_8B, 4, 4, {"method": "full"}, "zero3-replicated"),
        (LLAMA3_70B, 8, 8, {}, "zero3"),  # 141 GB of weights: sharded; one node, so not hpZ
        (LLAMA3_70B, 16, 8, {}, "zero3-hpz"),  # two nodes: a shard per node fits
        (LLAMA3_70B, 16, 1, {}, "zero3"),  # a GPU per node: a node's shard is the whole model
        (LLAMA3_70B, 1, 1, {"method": "qlora"}, None),  # 12k tokens of fp32 residual stream: no
        (LLAMA3_70B, 1, 1, {"method": "qlora", "max_prompt_length": 4096}, "single"),
    ],
)
def test_auto_takes_the_fastest_layout_that_fits(config, gpus, per_node, spec, expected):
    assert _auto(config, gpus, per_node, **spec) == expected


def test_speed_order_puts_the_least_communication_first():
    assert SPEED_ORDER[0] == "single" and SPEED_ORDER[-1] == "zero3" and set(SPEED_ORDER) == set(LAYOUTS)


def test_a_run_that_fits_nowhere_is_refused_with_each_layouts_peak():
    with pytest.raises(
        FailedPrecondition, match=r"(?s)no layout fits 2 GPU\(s\).*zero3-replicated\s+\d+\.\d GiB"
    ):
        plan(ModelShape.from_config(LLAMA3_8B), _spec(method="full"), Topology(2, 2, H100), liger=True)


def test_what_runs_as_one_process_is_refused_on_several():
    shape = ModelShape.from_config(LLAMA3_8B)
    with pytest.raises(FailedPrecondition, match=r"QLoRA and lora\.trainable_tokens run as one process"):
        plan(shape, _spec(method="qlora"), Topology(2, 2, H100), liger=True)
    with pytest.raises(FailedPrecondition, match="layout=single cannot run here: one process only"):
        plan(shape, _spec(layout="single"), Topology(2, 2, H100), liger=True)


def test_a_resumed_run_keeps_its_checkpoints_layout_and_an_asked_for_one_is_kept_with_a_note():
    shape = ModelShape.from_config(LLAMA3_8B)
    resumed = plan(shape, _spec(), Topology(2, 2, H100), liger=True, resume_layout="zero3")
    assert resumed.chosen == "zero3" and "checkpoint" in resumed.notes[0]
    asked = plan(shape, _spec(layout="zero3-hpz"), Topology(2, 2, H100), liger=True)
    assert asked.chosen == "zero3-hpz" and "one node" in asked.notes[0]
    # a checkpoint of one process cannot be resumed by two: auto picks afresh (the resume check refuses)
    assert (
        plan(shape, _spec(), Topology(2, 2, H100), liger=True, resume_layout="single").chosen
        == "zero3-replicated"
    )


def test_without_a_known_memory_every_layout_fits():
    """A CPU run (or a plan without a card): the fastest layout for the process count."""
    shape = ModelShape.from_config(LLAMA3_70B)
    assert plan(shape, _spec(), Topology(2, 2, None), liger=False).chosen == "zero3-replicated"
    assert plan(shape, _spec(), Topology(1, 1, None), liger=False).chosen == "single"


def test_bad_shapes_and_topologies_are_refused_with_what_to_give():
    with pytest.raises(InvalidArgument, match="hidden_size"):
        ModelShape.from_config({"n_embd": 768, "n_layer": 12})
    with pytest.raises(InvalidArgument, match="multiple of the GPUs per node"):
        Topology(6, 4, H100)
    with pytest.raises(InvalidArgument, match=r"no config\.json"):
        ModelShape.from_model_dir(ROOT / "docs")
