"""`reviewstack-merge`: a shipped adapter folder merged onto its base, checked against PEFT's own merge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MERGE = str(Path(sys.executable).with_name("reviewstack-merge"))


def test_merge_writes_the_peft_merge_with_the_adapters_pi(tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from reviewstack.common.adapter_card import AdapterCard

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapter something to merge
            parameter.data.normal_(0, 0.5)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    AdapterCard(
        base_model="tiny-llama",
        position_interpolation=1.5,
        target_context=768,
        max_prompt_length=512,
        max_response_length=256,
    ).write(adapter)
    expected = model.merge_and_unload().state_dict()

    out = tmp_path / "merged"
    result = subprocess.run(
        [MERGE, str(adapter), "--base", str(tiny_model), "--out", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str(out)
    config = json.loads((out / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "linear" and config["rope_parameters"]["factor"] == 1.5
    assert config["max_position_embeddings"] == 512 * 1.5  # the tiny model's context, extended
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for key in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.v_proj.weight"):
        assert torch.allclose(merged[key], expected[key], atol=1e-6), key
    assert not torch.allclose(merged["model.layers.0.self_attn.q_proj.weight"],
                              AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()[
                                  "model.layers.0.self_attn.q_proj.weight"])  # fmt: skip
    assert (out / "tokenizer.json").is_file()

    again = subprocess.run(
        [MERGE, str(adapter), "--base", str(tiny_model), "--out", str(out)], capture_output=True
    )
    assert again.returncode == 0  # merged before from the same adapter: found, not redone


def test_merge_refuses_a_folder_that_is_no_adapter(tmp_path: Path) -> None:
    result = subprocess.run(
        [MERGE, str(tmp_path), "--out", str(tmp_path / "out")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "not a review-stack adapter folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_merge_refuses_a_card_without_what_the_merge_needs(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "reviewstack-adapter.json").write_text(json.dumps({"position_interpolation": "x"}))
    result = subprocess.run(
        [MERGE, str(tmp_path), "--out", str(tmp_path / "out")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "is not a valid adapter card: " in result.stderr
    assert "position_interpolation" in result.stderr and "base_model" in result.stderr
