"""Benchmark: the memory model's predicted peak per GPU against the peak measured, per layout and method.

Runs bench/train_throughput.py (Llama-3-8B shape, random weights, 12,288-token sequences) once per
method — LoRA in every layout the GPUs allow, full fine-tuning and QLoRA where they fit — with two
micro-batches and one optimizer step each: enough for every tensor a step keeps (weights, gradients,
optimizer state, activations) to have been allocated. Each row holds what `layout: auto` reads to decide
(common/train_memory.py) and what torch's allocator measured on every GPU.

    python bench/train_memory.py [--gpus 1] [--methods lora,full,qlora] [--out FILE]
    python bench/train_memory.py --tiny     # CPU smoke run (nothing is measured there)

Needs what bench/train_throughput.py needs, and bitsandbytes for QLoRA. Prints a table and writes the
JSON (card, commit, one row per variant with predicted_peak_gib, peak_gib, prediction_error).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchlib import ROOT

THROUGHPUT = Path(__file__).with_name("train_throughput.py")
KEPT = ("date", "card", "commit", "torch", "transformers", "peft", "deepspeed", "liger_kernel", "shape")
KEPT += ("tokens_per_sequence",)


def variants(method: str, gpus: int) -> list[str]:
    """The layouts this method can run in on `gpus` GPUs (QLoRA runs as one process only)."""
    if gpus == 1:
        return ["ours", "zero3-1gpu", "zero3-replicated-1gpu"] if method == "lora" else ["ours"]
    if method == "qlora":
        return []
    return [f"{layout}-{gpus}gpu" for layout in ("zero3", "zero3-replicated")]


def run(method: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    command = [
        sys.executable, str(THROUGHPUT), "--method", method,
        "--variants", ",".join(variants(method, args.gpus)),
        "--effective-batch", str(2 * args.gpus), "--steps", "1", "--warmup", "1", "--out", str(out),
    ]  # fmt: skip
    if args.tiny:
        command.append("--tiny")
    if args.model_dir:
        command += ["--model-dir", args.model_dir]
    subprocess.run(command, check=False)  # a variant that fails (out of memory) is a row with its error
    return (
        json.loads(out.read_text()) if out.exists() else {"rows": [{"variant": method, "error": "no result"}]}
    )


def report(rows: list[dict[str, Any]], card: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"peak memory per GPU, predicted and measured — {card}")
    for column in ("method", "variant", "layout", "gpus", "predicted GiB", "measured GiB", "error"):
        table.add_column(column, justify="left" if column in ("method", "variant", "layout") else "right")
    for row in rows:
        if "error" in row:
            table.add_row(row.get("method", ""), row["variant"], "", "", "", "", row["error"][:50])
            continue
        table.add_row(
            row["method"],
            row["variant"],
            row["layout"],
            str(row["gpus"]),
            f"{row['predicted_peak_gib']:.1f}",
            f"{row['peak_gib']:.1f}",
            f"{row['prediction_error']:+.1%}" if "prediction_error" in row else "",
        )
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=1, help="GPUs of the multi-process layouts")
    parser.add_argument("--methods", default="lora,full,qlora")
    parser.add_argument("--model-dir", help="the random Llama-3-8B (default: train_throughput.py's)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on a tiny model")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_memory.json"))
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            if not variants(method, args.gpus):
                continue
            result = run(method, args, Path(tmp) / f"{method}.json")
            summary = summary or {k: v for k, v in result.items() if k not in ("rows", "method")}
            rows += [{"method": method, **row} for row in result["rows"]]
            out = {**{k: summary.get(k) for k in KEPT}, "benchmark": "train_memory", "rows": rows}
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(
                json.dumps(out, indent=2) + "\n"
            )  # after each method: a cut run keeps rows
    report(rows, summary.get("card", "?"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
