"""The training job as a process: PI + LoRA on a tiny random Llama over a dataset built by data-prep —
loss falls, best-by-validation, merged weights that load and generate, resume after SIGKILL, and every
bad input refused before training starts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reviewstack.common.store import open_store

TRAIN = str(Path(sys.executable).parent / "reviewstack-train")
# one thread: a 2-layer model spends more time synchronising two threads than computing (6× slower)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _spec(tmp: Path, tiny_model: Path, dataset: str, **overrides) -> Path:
    spec = {
        "run_id": "tiny",
        "dataset": dataset,
        "base_model": str(tiny_model),
        "output": str(tmp / "runs-store"),
        "target_context": 768,
        "max_prompt_length": 384,
        "max_response_length": 256,
        "max_steps": 6,
        "effective_batch_size": 1,
        "eval_steps": 2,
        "save_steps": 2,
        "learning_rate": 0.01,
        "warmup_ratio": 0.0,
        "max_eval_examples": 1,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        **overrides,
    }
    path = tmp / f"{spec['run_id']}.json"
    path.write_text(json.dumps(spec))
    return path


def _train(spec: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TRAIN, str(spec), *overrides], capture_output=True, text=True, timeout=900, env=ENV
    )


@pytest.fixture(scope="module")
def trained(tiny_model, small_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    run = _train(_spec(tmp, tiny_model, small_dataset))
    assert run.returncode == 0, run.stderr[-3000:]
    return {
        "store": open_store(str(tmp / "runs-store")),
        "summary": json.loads(run.stdout.splitlines()[-1]),
        "tmp": tmp,
    }


def test_loss_decreases_and_status_is_published(trained):
    store = trained["store"]
    rows = [json.loads(line) for line in store.get_bytes("runs/tiny/metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(val) == 3 and val[-1] < val[0]
    assert sum(r["loss"] for r in rows[-2:]) < sum(r["loss"] for r in rows[:2])
    assert all(r["tokens_per_s"] > 0 and r["lr"] >= 0 for r in rows)
    status = json.loads(store.get_bytes("runs/tiny/status.json"))
    assert status["state"] == "succeeded" and status["step"] == status["total_steps"] == 6
    assert json.loads(store.get_bytes("runs/tiny/spec.json"))["run_id"] == "tiny"
    assert store.list_published("runs/tiny/checkpoints") == [
        f"runs/tiny/checkpoints/step-{s}" for s in (2, 4, 6)
    ]


def test_best_is_the_checkpoint_with_the_lowest_validation_loss(trained):
    store = trained["store"]
    rows = [json.loads(line) for line in store.get_bytes("runs/tiny/metrics.jsonl").decode().splitlines()]
    best_row = min((r for r in rows if "val_loss" in r), key=lambda r: r["val_loss"])
    best = store.read_manifest("runs/tiny/best")
    assert best["step"] == best_row["step"] == trained["summary"]["best_step"]
    assert best["val_loss"] == pytest.approx(best_row["val_loss"])
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(best["files"])


def test_merged_model_carries_the_pi_scaling_loads_and_generates(trained):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    store = trained["store"]
    manifest = store.read_manifest("runs/tiny/merged")
    assert manifest["pi_factor"] == 1.5 and manifest["run_id"] == "tiny"
    local = trained["tmp"] / "merged"
    store.download_dir("runs/tiny/merged", local)
    config = json.loads((local / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "linear" and config["rope_parameters"]["factor"] == 1.5
    assert config["max_position_embeddings"] == 768
    assert not any(name.startswith("adapter") for name in manifest["files"])  # merged, not an adapter
    model = AutoModelForCausalLM.from_pretrained(local)
    tokenizer = AutoTokenizer.from_pretrained(local)
    ids = tokenizer("1. How to evaluate", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5


def test_a_killed_run_resumes_from_its_last_checkpoint(tiny_model, small_dataset, tmp_path):
    spec = _spec(
        tmp_path, tiny_model, small_dataset, run_id="resume", max_steps=12, eval_steps=12, merge=False
    )
    store = open_store(str(tmp_path / "runs-store"))
    process = subprocess.Popen([TRAIN, str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + 600
    while not store.is_published("runs/resume/checkpoints/step-2"):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(int(p.rsplit("-", 1)[1]) for p in store.list_published("runs/resume/checkpoints"))
    assert killed_at < 12
    again = _train(spec)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed" in again.stderr
    logged = [
        int(line.split("step=")[1].split()[0])
        for line in again.stderr.splitlines()
        if "[info     ] step " in line and "step=" in line
    ]
    assert logged[0] == killed_at + 1 and logged[-1] == 12  # not from zero
    rows = [json.loads(line) for line in store.get_bytes("runs/resume/metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    final = json.loads(store.get_bytes("runs/resume/checkpoints/step-12/trainer_state.json"))
    assert final["step"] == 12 and final["sampler"] == {"epoch": 3, "position": 0, "n": 4}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dataset": "/nowhere/datasets/x/v1"}, "no published dataset"),
        ({"pi_factor": 0.5}, "below 1"),
        (
            {"target_context": 600, "max_prompt_length": 300, "max_response_length": 256},
            "target_context is 600",
        ),
        ({"device": "cuda"}, "no GPU"),
        ({"lora": {"target_modules": ["nonexistent_proj"]}}, "not modules"),
        ({"lora": {"trainable_tokens": ["two words"]}}, "not one"),
    ],
)
def test_bad_input_is_refused_before_training(tiny_model, small_dataset, tmp_path, change, message):
    run = _train(_spec(tmp_path, tiny_model, change.pop("dataset", small_dataset), run_id="bad", **change))
    assert run.returncode == 2, run.stderr[-2000:]
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "runs-store" / "runs" / "bad" / "checkpoints").exists()
    status = tmp_path / "runs-store" / "runs" / "bad" / "status.json"
    if "pi_factor" not in change:  # a spec that fails validation names no run to record it in
        assert json.loads(status.read_text())["state"] == "failed" and message in status.read_text()


def test_base_model_without_tokenizer_is_refused(tiny_model, small_dataset, tmp_path):
    bare = tmp_path / "bare-model"
    shutil.copytree(tiny_model, bare, ignore=shutil.ignore_patterns("tokenizer*"))
    run = _train(_spec(tmp_path, bare, small_dataset, run_id="bad"))
    assert run.returncode == 2 and "no tokenizer" in run.stderr


def test_trainable_tokens_train_their_embedding_rows_and_reach_the_tied_output(
    tiny_model, small_dataset, tmp_path
):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    eot = 128009  # <|eot_id|>, the tiny model's end of turn
    lora = {"r": 8, "alpha": 16, "dropout": 0.0, "trainable_tokens": ["<|eot_id|>"]}
    spec = _spec(tmp_path, tiny_model, small_dataset, run_id="tokens", lora=lora, max_steps=2, eval_steps=2)
    run = _train(spec, "learning_rate=0.01")
    assert run.returncode == 0, run.stderr[-3000:]
    store = open_store(str(tmp_path / "runs-store"))
    store.download_dir("runs/tokens/best", tmp_path / "best")
    adapter = load_file(tmp_path / "best" / "adapter_model.safetensors")
    assert any("trainable_tokens" in key for key in adapter)  # the rows ship inside the adapter
    store.download_dir("runs/tokens/merged", tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_model).get_input_embeddings().weight
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    rows = merged.get_input_embeddings().weight
    assert not torch.allclose(rows[eot], base[eot])  # the end-of-turn row trained
    assert torch.equal(rows[:eot], base[:eot]) and torch.equal(rows[eot + 1 :], base[eot + 1 :])
    assert torch.equal(merged.get_output_embeddings().weight[eot], rows[eot])  # and its logit moved with it


def test_trainable_token_rows_take_their_own_learning_rate(tiny_model, small_dataset, tmp_path):
    import torch

    from reviewstack.common.runspec import TrainSpec
    from reviewstack.trainjob.model import load_model, parameter_groups, trainable_parameters

    lora = {"r": 8, "alpha": 16, "trainable_tokens": ["<|eot_id|>"], "trainable_tokens_learning_rate": 1e-3}
    spec = TrainSpec(**json.loads(_spec(tmp_path, tiny_model, small_dataset, lora=lora).read_text()))
    model, _ = load_model(spec, torch.device("cpu"), torch.float32)
    groups = parameter_groups(model, spec)
    assert [g.get("lr") for g in groups] == [None, 1e-3]  # the adapter at the run's rate, the rows at theirs
    hidden = model.get_input_embeddings().weight.shape[1]
    assert [tuple(p.shape) for p in groups[1]["params"]] == [(1, hidden)]  # one row, shared with the output
    assert sum(p.numel() for g in groups for p in g["params"]) == trainable_parameters(model)
    same_rate = spec.model_copy(
        update={"lora": spec.lora.model_copy(update={"trainable_tokens_learning_rate": None})}
    )
    assert len(parameter_groups(model, same_rate)) == 1


def test_full_fine_tuning_publishes_full_weights(tiny_model, small_dataset, tmp_path):
    from transformers import AutoModelForCausalLM

    run = _train(
        _spec(
            tmp_path,
            tiny_model,
            small_dataset,
            run_id="full",
            method="full",
            max_steps=2,
            eval_steps=2,
            learning_rate=1e-3,
        )
    )
    assert run.returncode == 0, run.stderr[-3000:]
    store = open_store(str(tmp_path / "runs-store"))
    best = store.read_manifest("runs/full/best")
    assert "model.safetensors" in best["files"] and not any(f.startswith("adapter") for f in best["files"])
    store.download_dir("runs/full/merged", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert merged.config.rope_parameters["factor"] == 1.5


def test_a_job_with_another_spec_for_an_existing_run_id_is_refused(trained, tiny_model, small_dataset):
    """A run id names one spec: a job started by hand under a finished run's id with other settings
    must not rewrite the spec that a resumed run reads, nor train."""
    store_dir = trained["tmp"] / "runs-store"
    stored = (store_dir / "runs/tiny/spec.json").read_bytes()
    spec = _spec(trained["tmp"], tiny_model, small_dataset, learning_rate=0.02)
    run = _train(spec)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "holds another spec for run tiny" in " ".join(run.stderr.split())
    assert (store_dir / "runs/tiny/spec.json").read_bytes() == stored
