"""DeepSpeed ZeRO-3 through torchrun on CPU (gloo): two ranks train what one plain process trains on
the same examples, to float rounding, in each zero3 layout (weights sharded, kept whole on every rank,
or given a node shard); SIGTERM stops both at the same step with a checkpoint holding both ranks'
shards; a restart resumes from it; best/ is a PEFT adapter; another layout is refused."""

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

from .test_training import ENV, _spec, _train

pytestmark = pytest.mark.slow  # about 1.5 minutes on 2 cores: seven training processes, four of them torchrun
# --shutdown-timeout: how long torchrun lets the ranks finish a step and checkpoint after SIGTERM
TORCHRUN = [
    str(Path(sys.executable).parent / "torchrun"),
    *("--standalone", "--nproc-per-node", "2", "--shutdown-timeout", "300"),
]
STEPS = 6
# effective batch 2: one process accumulates two micro-batches, two ranks take one each
COMMON = {"max_steps": STEPS, "effective_batch_size": 2, "eval_steps": 2, "save_steps": 2, "merge": False}


def _rows(store, run: str) -> list[dict]:
    return [json.loads(line) for line in store.get_bytes(f"runs/{run}/metrics.jsonl").decode().splitlines()]


def _logged_steps(stderr: str) -> list[int]:
    return [
        int(line.split(" step=")[1].split()[0])
        for line in stderr.splitlines()
        if "[info     ] step " in line and " step=" in line
    ]


@pytest.fixture(scope="module")
def plain(tiny_model, small_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plain")
    run = _train(_spec(tmp, tiny_model, small_dataset, run_id="plain", **COMMON))
    assert run.returncode == 0, run.stderr[-3000:]
    store = open_store(str(tmp / "runs-store"))
    return {"store": store, "rows": _rows(store, "plain")}


@pytest.fixture(scope="module")
def zero3(tiny_model, small_dataset, tmp_path_factory):
    """Two ranks: SIGTERM once step 2 is checkpointed, then a restart that runs to the end and merges."""
    tmp = tmp_path_factory.mktemp("zero3")
    # merge from the start: a restart must run the spec it was stopped with (a run id names one spec)
    spec = _spec(tmp, tiny_model, small_dataset, run_id="zero3", layout="zero3", **{**COMMON, "merge": True})
    store = open_store(str(tmp / "runs-store"))
    first = subprocess.Popen(
        [*TORCHRUN, "-m", "reviewstack.trainjob", str(spec)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
        start_new_session=True,  # torchrun and its workers, to clean up as one group if this fails
    )
    try:
        deadline = time.monotonic() + 600
        while not store.is_published("runs/zero3/checkpoints/step-2"):
            assert first.poll() is None, first.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        first.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    stopped = json.loads(store.get_bytes("runs/zero3/status.json"))
    again = subprocess.run(
        [*TORCHRUN, "-m", "reviewstack.trainjob", str(spec)],
        capture_output=True,
        text=True,
        timeout=900,
        env=ENV,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    return {"store": store, "stopped": stopped, "stderr": again.stderr, "spec": spec, "tmp": tmp}


def test_two_ranks_train_what_one_process_trains(plain, zero3):
    rows, reference = _rows(zero3["store"], "zero3"), plain["rows"]
    assert [r["step"] for r in rows] == [r["step"] for r in reference] == list(range(1, STEPS + 1))
    for row, ref in zip(rows, reference, strict=True):
        assert ("val_loss" in row) == ("val_loss" in ref), row["step"]
        # same examples, same token normalisation, same gradient, same optimizer and schedule
        for key in [k for k in ("loss", "grad_norm", "lr", "val_loss") if k in ref]:
            assert row[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-9), (row["step"], key)
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["val_loss"] < rows[1]["val_loss"]
    status = json.loads(zero3["store"].get_bytes("runs/zero3/status.json"))
    assert status["state"] == "succeeded" and status["step"] == STEPS


@pytest.mark.parametrize(
    ("layout", "taken", "placed"),
    [
        # on CPUs (no GPU memory to fit) auto takes the fastest layout for two processes
        ("auto", "zero3-replicated", "whole_on_every_rank=1.0 with_node_shard=0.0"),
        ("zero3-hpz", "zero3-hpz", "whole_on_every_rank=0.0 with_node_shard=1.0"),
    ],
    ids=["auto", "zero3-hpz"],
)
def test_the_other_layouts_train_what_one_process_trains(
    plain, tiny_model, small_dataset, tmp_path, layout, taken, placed
):
    spec = _spec(tmp_path, tiny_model, small_dataset, run_id="layout", layout=layout, **COMMON)
    run = subprocess.run(
        [*TORCHRUN, "-m", "reviewstack.trainjob", str(spec)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "weights placed" in run.stderr and placed in run.stderr  # what DeepSpeed did with the weights
    store = open_store(str(tmp_path / "runs-store"))
    for row, ref in zip(_rows(store, "layout"), plain["rows"], strict=True):
        for key in [k for k in ("loss", "grad_norm", "lr", "val_loss") if k in ref]:
            assert row[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-9), (row["step"], key)
    record = json.loads(store.get_bytes("runs/layout/layout.json"))
    assert record["requested"] == layout and record["chosen"] == taken and record["gpus"] == 2
    assert {r["layout"] for r in record["layouts"]} == {"single", "zero3", "zero3-replicated", "zero3-hpz"}
    assert "measured" not in record  # peaks are measured on GPUs only


def test_sigterm_stops_both_ranks_and_the_restart_resumes(zero3):
    stopped, store = zero3["stopped"], zero3["store"]
    assert stopped["state"] == "stopped" and 3 <= stopped["step"] < STEPS, stopped
    assert store.is_published(f"runs/zero3/checkpoints/step-{stopped['step']}")
    assert "resumed" in zero3["stderr"]
    logged = _logged_steps(zero3["stderr"])  # rank 0 logs the steps
    assert logged == list(range(stopped["step"] + 1, STEPS + 1))  # continued, not from zero


def test_checkpoint_holds_the_shards_of_both_ranks(zero3, tmp_path):
    store = zero3["store"]
    manifest = store.read_manifest("runs/zero3/checkpoints/step-2")
    assert manifest["format"] == "deepspeed-zero3" and manifest["world_size"] == 2
    for rank in (0, 1):
        for kind in ("model", "optim"):
            name = f"zero/state/zero_pp_rank_{rank}_mp_rank_00_{kind}_states.pt"
            assert manifest["files"][name]["size"] > 0, name
        assert f"rng-rank{rank}.pt" in manifest["files"]
    # every listed object is there with the recorded hash (download_dir verifies each one)
    refs = store.download_dir("runs/zero3/checkpoints/step-2", tmp_path / "ckpt")
    assert {r.key.split("step-2/", 1)[1] for r in refs} == set(manifest["files"]) | {"manifest.json"}
    state = json.loads((tmp_path / "ckpt" / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["sampler"] == {"epoch": 1, "position": 0, "n": 4}


def test_best_is_a_peft_adapter_equal_to_the_plain_runs(plain, zero3, tiny_model, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    store, reference = zero3["store"], plain["store"]
    best = store.read_manifest("runs/zero3/best")
    assert best["step"] == reference.read_manifest("runs/plain/best")["step"]
    store.download_dir("runs/zero3/best", tmp_path / "best")
    reference.download_dir("runs/plain/best", tmp_path / "plain-best")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "best")
    assert any("lora_B" in name for name, _ in model.named_parameters())
    gathered = load_file(tmp_path / "best" / "adapter_model.safetensors")
    expected = load_file(tmp_path / "plain-best" / "adapter_model.safetensors")
    assert set(gathered) == set(expected)
    for name, tensor in gathered.items():  # the full tensors, not one rank's partition
        assert tensor.shape == expected[name].shape
        torch.testing.assert_close(tensor, expected[name], rtol=1e-4, atol=1e-5)
    assert any(float(t.abs().max()) > 0 for n, t in gathered.items() if "lora_B" in n)  # trained (B starts 0)
    merged = store.read_manifest("runs/zero3/merged")  # written by rank 0 alone after the ranks are done
    assert merged["run_id"] == "zero3" and merged["best_step"] == best["step"]


@pytest.mark.parametrize("layout", ["layout=zero3", "layout=single"])
def test_a_checkpoint_is_refused_by_another_layout(zero3, tmp_path, layout):
    output = tmp_path / "runs-store"
    shutil.copytree(zero3["tmp"] / "runs-store", output)  # this run records its failure in status.json
    # the copy's spec.json names the other store and STEPS: without it the job records the spec it is
    # given, so what refuses it here is the checkpoint's layout, not the run id's spec
    open_store(str(output)).delete("runs/zero3/spec.json")
    run = _train(zero3["spec"], f"output={output}", f"max_steps={STEPS + 2}", layout)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "written by a zero3 layout with 2 processes" in run.stderr and "Traceback" not in run.stderr


def test_one_process_runs_zero3_without_torchrun(plain, tiny_model, small_dataset, tmp_path):
    spec = _spec(tmp_path, tiny_model, small_dataset, run_id="single", layout="zero3", **COMMON)
    run = _train(spec, "max_steps=2")
    assert run.returncode == 0, run.stderr[-3000:]
    store = open_store(str(tmp_path / "runs-store"))
    first = _rows(store, "single")[0]
    for key in ("loss", "grad_norm"):  # before any update: the schedule (2 steps here, 6 there) is moot
        assert first[key] == pytest.approx(plain["rows"][0][key], rel=1e-5)
    manifest = store.read_manifest("runs/single/checkpoints/step-2")
    assert (
        manifest["world_size"] == 1
        and "zero/state/zero_pp_rank_0_mp_rank_00_optim_states.pt" in manifest["files"]
    )
