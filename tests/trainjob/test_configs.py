"""Every shipped training config is a valid spec once the per-run fields are given."""

from pathlib import Path

import pytest

from reviewstack.trainjob.main import read_spec

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training-job" / "configs").glob("*.yaml"))
RUN_FIELDS = ["run_id=check", "dataset=/store/datasets/x/v1", "base_model=/models/m", "output=/store"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_builds(path):
    spec = read_spec(str(path), RUN_FIELDS)
    assert spec.run_id == "check"
    assert path.read_text().startswith("# reviewstack-train training-job/configs/")  # opens with its command


def test_reference_config_is_the_methods():
    spec = read_spec(str(CONFIGS[[p.name for p in CONFIGS].index("llama3-8b-lora-12k.yaml")]), RUN_FIELDS)
    assert (spec.target_context, spec.max_prompt_length, spec.max_response_length) == (12_288, 11_138, 1_150)
    assert (spec.effective_batch_size, spec.learning_rate, spec.epochs, spec.save_steps) == (16, 1e-4, 3, 100)
    assert spec.lora.r == 16 and len(spec.lora.target_modules) == 7


def test_overrides_reach_nested_keys_and_bad_ones_are_refused():
    from pydantic import ValidationError

    spec = read_spec(str(CONFIGS[0]), [*RUN_FIELDS, "lora.r=4", "learning_rate=3e-5"])
    assert spec.lora.r == 4 and spec.learning_rate == 3e-5
    with pytest.raises(ValidationError, match="lora_rank"):
        read_spec(str(CONFIGS[0]), [*RUN_FIELDS, "lora_rank=4"])
