"""`reviewstack train …` as a user runs it: one-line errors, the Job YAML, and a run's summary.

The commands run as real processes, started together (each spends its first seconds importing).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import yaml

from .conftest import BIN, HAS_TRAIN_JOB, publish_dataset, spec_data, write_spec

CLI = str(BIN / "reviewstack")


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("REVIEWSTACK_")}
    return subprocess.Popen(
        [CLI, "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**base, "COLUMNS": "200", **(env or {})},
    )


def _done(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _finished_run(store, run_id: str) -> None:
    """A run folder as the job leaves it: spec, final status, best/ and merged/ published."""
    spec = spec_data(store.uri_for("datasets/tiny/v1"), store.uri, run_id=run_id)
    store.put_bytes(f"runs/{run_id}/spec.json", json.dumps(spec).encode())
    status = {
        "state": "succeeded",
        "step": 300,
        "total_steps": 300,
        "epoch": 3.0,
        "metrics": {
            "loss": 0.8123,
            "val_loss": 0.95,
            "lr": 0.0,
            "tokens_per_s": 5337.0,
            "peak_mem_gib": 23.7,
            "predicted_peak_gib": 24.6,
        },
        "best": {"step": 200, "val_loss": 0.9011},
        "message": "done",
        "updated_at": "2026-01-02T03:04:05+00:00",
    }
    store.put_bytes(f"runs/{run_id}/status.json", json.dumps(status).encode())
    for name in ("best", "merged"):
        with store.publish(f"runs/{run_id}/{name}") as pub:
            pub.put_bytes("model.safetensors", b"weights")


def test_cli_verbs(tmp_path, store, dataset, s3_server, s3_store):
    local_spec = write_spec(tmp_path / "local.json", spec_data(dataset, store.uri))
    s3_dataset = publish_dataset(s3_store)
    cluster_spec = write_spec(
        tmp_path / "cluster.yaml", spec_data(s3_dataset, s3_store.uri, run_id="big-run")
    )
    _finished_run(store, "done-run")
    k8s_env = {
        **s3_server.env(),
        "REVIEWSTACK_K8S_IMAGE": "registry.example/train:9",
        "REVIEWSTACK_K8S_NAMESPACE": "ml",
    }
    store_env = {"REVIEWSTACK_STORE": store.uri}
    procs = {
        "bad-override": _start("run", str(local_spec), "lora.r=0", "warmup=0.1"),
        "render": _start(
            "render-job", str(cluster_spec), "--gpus", "4", "--nodes", "2", "--upload", env=k8s_env
        ),
        "status": _start("status", "done-run", env=store_env),
    }
    if HAS_TRAIN_JOB:  # end to end through the real job: a base model that does not exist is bad input
        real_spec = write_spec(
            tmp_path / "real.json",
            spec_data(str(store.root / "datasets/tiny/v1"), str(store.root), run_id="no-model"),
        )
        logs = tmp_path / "logs"
        procs["real-job"] = _start(
            "run",
            str(real_spec),
            f"base_model={tmp_path}/no-such-model",
            env={"REVIEWSTACK_LOCAL_LOG_DIR": str(logs)},
        )
        # a run stopped from outside (a supervisor's SIGTERM, as Ctrl-C would): the job is stopped too
        procs["stopped"] = _start(
            "run",
            str(real_spec),
            "run_id=stopped",
            f"base_model={tmp_path}/no-such-model",
            env={"REVIEWSTACK_LOCAL_LOG_DIR": str(logs), "REVIEWSTACK_CANCEL_GRACE_S": "5"},
        )
        stopped = procs["stopped"]
        assert stopped.stderr is not None
        first_line = stopped.stderr.readline()  # printed once the run is launched and followed
        assert first_line.startswith("run stopped: writing to"), first_line
        stopped.send_signal(signal.SIGTERM)
    results = {name: _done(proc) for name, proc in procs.items()}

    code, out, err = results["bad-override"]
    assert code == 2 and "Traceback" not in err
    line = " ".join(err.split())
    assert "error: invalid run spec: lora.r: Input should be greater than or equal to 1" in line
    assert "warmup: Extra inputs are not permitted" in line

    code, out, err = results["render"]
    assert code == 0, err
    job, service = list(yaml.safe_load_all(out))
    spec_uri = s3_store.uri_for("runs/big-run/spec.json")
    assert (job["kind"], job["spec"]["completionMode"], service["kind"]) == ("Job", "Indexed", "Service")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == [spec_uri] and container["image"] == "registry.example/train:9"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4" and job["metadata"]["namespace"] == "ml"
    assert json.loads(s3_store.get_bytes("runs/big-run/spec.json"))["run_id"] == "big-run"  # --upload
    assert f"spec written to {spec_uri}" in err

    code, out, err = results["status"]
    assert code == 0, err
    text = " ".join(out.split())
    assert "run done-run succeeded" in text
    assert "steps 300 / 300" in text and "final loss 0.8123" in text
    assert "best val loss 0.9011 at step 200" in text
    assert "peak memory 23.7 GiB (predicted 24.6: layout.json)" in text
    assert f"best/ {store.uri}/runs/done-run/best" in text
    assert f"merged/ {store.uri}/runs/done-run/merged" in text

    if HAS_TRAIN_JOB:
        code, out, err = results["real-job"]
        assert code == 2, out + err  # the job's exit status 2, passed on: fix the spec, retrying won't help
        text = " ".join(out.split())
        assert "run no-model failed" in text and "the training job refused its spec or input" in text
        assert "no-such-model" in text  # the job's own reason
        assert f"log {logs}/no-model.log" in text
        log = (logs / "no-model.log").read_text()
        assert log.count("=== ") == 1 and "no-such-model" in log  # one attempt: never retried

        code, out, err = results["stopped"]
        assert code == 130, out + err
        assert "run stopped cancelled" in out and "submitting the same run_id resumes it" in " ".join(
            out.split()
        )
        assert "stopping: the job saves a checkpoint first" in err
        log = (logs / "stopped.log").read_text()
        assert log.count("=== ") == 1 and "cannot train" not in log  # stopped before it could fail


def test_list_reads_the_runs_of_a_store(store):
    """`train list` without --server: the table of what runs/ holds (in process: the same code)."""
    from rich.console import Console

    from reviewstack.training.cli import _store_controller
    from reviewstack.training.summary import runs_table

    _finished_run(store, "done-run")
    store.put_bytes(
        "runs/starting/spec.json", json.dumps(spec_data("/d", store.uri, run_id="starting")).encode()
    )
    console = Console(record=True, width=200)
    console.print(runs_table(_store_controller(store.uri).list()))
    rows = {line.split()[1]: line for line in console.export_text().splitlines() if line.startswith("│")}
    done = rows["done-run"]
    assert "succeeded" in done and "300/300" in done and "0.8123" in done and "0.9011 (200)" in done
    assert "yes" in rows["done-run"]  # merged/ is published
    assert "pending" in rows["starting"]  # a spec and no status yet


def test_render_job_upload_never_replaces_a_runs_spec(tmp_path, s3_server, s3_store):
    """`--upload` writes a new run's spec; the same spec again is a resume, another one is refused."""
    cluster_spec = write_spec(
        tmp_path / "cluster.yaml", spec_data(publish_dataset(s3_store), s3_store.uri, run_id="kept-run")
    )
    env = {**s3_server.env(), "REVIEWSTACK_K8S_IMAGE": "registry.example/train:9"}
    first = _done(_start("render-job", str(cluster_spec), "--upload", env=env))
    assert first[0] == 0, first[2]
    stored = s3_store.get_bytes("runs/kept-run/spec.json")
    again = _done(_start("render-job", str(cluster_spec), "--upload", env=env))
    assert again[0] == 0 and "already holds this spec" in again[2], again[2]
    other = _done(_start("render-job", str(cluster_spec), "learning_rate=0.0002", "--upload", env=env))
    assert other[0] == 2 and "learning_rate" in " ".join(other[2].split()), other[2]
    assert s3_store.get_bytes("runs/kept-run/spec.json") == stored


def test_plan_predicts_each_layout_and_names_the_one_auto_takes(tmp_path):
    """`train plan` for Llama-3-8B (its config.json alone) on 80 GB cards: LoRA on 2 GPUs keeps the base
    whole on each; full fine-tuning on 2 fits nowhere (exit 1); a model directory without a config is a
    one-line error naming what to give."""
    llama3_8b = {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336}
    llama3_8b |= {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8}
    write_spec(tmp_path / "config.json", llama3_8b)  # base_model's config.json, as the job reads it
    spec = write_spec(
        tmp_path / "spec.json", spec_data("s3://b/datasets/x/v1", "s3://b", base_model=str(tmp_path))
    )
    lora = _start("plan", str(spec), "--gpus", "2", "--json")
    full = _start("plan", str(spec), "method=full", "--gpus", "2", "--gpu-memory", "79.1")
    missing = _start("plan", str(spec), "base_model=/models/none")
    code, out, err = _done(lora)
    assert code == 0, err
    plan = json.loads(out)
    assert plan["chosen"] == "zero3-replicated" and plan["gpus"] == 2 and plan["usable_gib"] == 70.19
    totals = {row["layout"]: row["total_gib"] for row in plan["layouts"]}
    assert totals["zero3"] < totals["zero3-replicated"] < plan["usable_gib"]
    assert {row["layout"]: row["why_not"] for row in plan["layouts"]}["single"] == "one process only"
    code, out, err = _done(full)
    assert code == 1 and "does not fit (70.2 GiB usable)" in out and "no layout runs this spec" in err
    code, out, err = _done(missing)
    assert code == 2 and "no config.json in /models/none" in err and "--model-config" in err
