"""Every shipped training config is a valid spec once the per-run fields are given."""

import json
from pathlib import Path

import pytest
import torch

from reviewstack.common.errors import FailedPrecondition, InvalidArgument
from reviewstack.common.runspec import load_train_spec
from reviewstack.trainjob import zero

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training-job" / "configs").glob("*.yaml"))
RUN_FIELDS = ["run_id=check", "dataset=/store/datasets/x/v1", "base_model=/models/m", "output=/store"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_builds(path):
    spec = load_train_spec(str(path), RUN_FIELDS)
    assert spec.run_id == "check"
    assert path.read_text().startswith("# reviewstack-train training-job/configs/")  # opens with its command


def test_reference_config_is_the_methods():
    reference = CONFIGS[[p.name for p in CONFIGS].index("llama3-8b-lora-12k.yaml")]
    spec = load_train_spec(str(reference), RUN_FIELDS)
    assert (spec.target_context, spec.max_prompt_length, spec.max_response_length) == (12_288, 11_138, 1_150)
    assert (spec.effective_batch_size, spec.learning_rate, spec.epochs, spec.save_steps) == (16, 1e-4, 3, 100)
    assert spec.lora.r == 16 and len(spec.lora.target_modules) == 7


def test_overrides_reach_nested_keys_and_bad_ones_are_refused():
    spec = load_train_spec(str(CONFIGS[0]), [*RUN_FIELDS, "lora.r=4", "learning_rate=3e-5"])
    assert spec.lora.r == 4 and spec.learning_rate == 3e-5
    with pytest.raises(InvalidArgument, match="lora_rank"):
        load_train_spec(str(CONFIGS[0]), [*RUN_FIELDS, "lora_rank=4"])


def test_trainable_tokens_are_a_list_override_and_only_beside_an_adapter():
    spec = load_train_spec(str(CONFIGS[0]), [*RUN_FIELDS, 'lora.trainable_tokens=["<|im_end|>"]'])
    assert spec.lora.trainable_tokens == ["<|im_end|>"]
    for other in ("method=full", "layout=zero3", "layout=zero3-replicated"):
        with pytest.raises(InvalidArgument, match="trainable_tokens"):
            load_train_spec(str(CONFIGS[0]), [*RUN_FIELDS, 'lora.trainable_tokens=["<|im_end|>"]', other])


@pytest.mark.parametrize(("device", "dtype"), [("cuda", torch.bfloat16), ("cpu", torch.float32)])
def test_deepspeed_config_is_filled_from_the_spec_and_device(device, dtype):
    spec = load_train_spec(str(CONFIGS[0]), RUN_FIELDS)
    config = zero.build_config(spec, "zero3", 4, 2, 2, torch.device(device), dtype)
    assert config["train_batch_size"] == spec.micro_batch_size * 4 * 2
    assert config["optimizer"]["params"]["lr"] == spec.learning_rate
    assert config["optimizer"]["params"]["fused"] is (device == "cuda")  # torch's fused AdamW on GPUs
    assert config["bf16"]["enabled"] is (dtype == torch.bfloat16)
    assert "auto" not in json.dumps(config)


@pytest.mark.parametrize(
    ("layout", "persistence", "hpz"),
    [("zero3", 0, 1), ("zero3-replicated", zero.PERSIST_ALL, 1), ("zero3-hpz", 0, 4)],
)
def test_each_layout_sets_what_deepspeed_shards(layout, persistence, hpz):
    """8 processes, 4 per node: the weights sharded over all 8, kept whole on each, or sharded a second
    time over the 4 of a node."""
    spec = load_train_spec(str(CONFIGS[0]), RUN_FIELDS)
    zero_config = zero.build_config(spec, layout, 2, 8, 4, torch.device("cuda"), torch.bfloat16)[
        "zero_optimization"
    ]
    assert zero_config["stage"] == 3
    assert zero_config["stage3_param_persistence_threshold"] == persistence
    assert zero_config["zero_hpz_partition_size"] == hpz
    if layout == "zero3-replicated":
        assert zero.PERSIST_ALL > 70_000_000_000  # above a 70B model's whole parameter count


def test_specs_written_with_deepspeed_read_as_layouts():
    """spec.json of runs made before layouts: `deepspeed` maps onto the layout it ran."""
    for legacy, layout in (("none", "single"), ("zero3", "zero3")):
        spec = load_train_spec(str(CONFIGS[0]), [*RUN_FIELDS, f"deepspeed={legacy}"])
        assert spec.layout == layout
    with pytest.raises(InvalidArgument, match="give layout only"):
        load_train_spec(str(CONFIGS[0]), [*RUN_FIELDS, "deepspeed=zero3", "layout=zero3"])
    with pytest.raises(InvalidArgument, match="qlora runs as one process"):
        load_train_spec(str(CONFIGS[0]), [*RUN_FIELDS, "method=qlora", "layout=zero3-replicated"])


def test_deepspeed_config_that_contradicts_the_spec_is_refused(tmp_path, monkeypatch):
    config = json.loads(zero.DEFAULT_CONFIG.read_text())
    config["optimizer"]["params"]["lr"] = 0.5
    (tmp_path / "zero3.json").write_text(json.dumps(config))
    monkeypatch.setenv(zero.CONFIG_ENV, str(tmp_path / "zero3.json"))
    spec = load_train_spec(str(CONFIGS[0]), RUN_FIELDS)
    with pytest.raises(FailedPrecondition, match=r"optimizer\.params\.lr=0\.5 but the run needs"):
        zero.build_config(spec, "zero3", 1, 1, 1, torch.device("cpu"), torch.float32)
