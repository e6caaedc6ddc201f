"""Benchmark: training tokens/s and peak GPU memory at 12,288 tokens, Llama-3-8B shape, random weights.

LoRA r=16 on all seven projections, gradient checkpointing, one 12,288-token sequence per micro-batch
(an 11,138-token prompt and a 1,150-token response, the method's lengths) and the method's effective
batch of 16 sequences per optimizer step through gradient accumulation (16 micro-batches on one GPU, 8
per GPU on two). Variants, each in its own process so that peak memory is its own:
- baseline: plain transformers + PEFT as a user would write it (`model(input_ids, labels=...)`, logits
  for every position, SDPA, PEFT's default fp32 adapters);
- ours: this training job's components (model loading with Position Interpolation and its speed-ups,
  the response-only loss, the same optimizer);
- ours-no-liger: ours without the Liger kernels (what the Triton kernels buy);
- <layout>-<N>gpu: ours in a multi-process layout over N GPUs (torchrun), aggregate tokens/s; layout is
  zero3 (everything sharded), zero3-replicated (weights whole on every GPU), zero3-hpz (a second weight
  shard per node) or auto (what the training job would pick on these GPUs, by the memory model).
Every row has the peak memory the memory model (common/train_memory.py) predicted beside the measured
one. `--method full|qlora` runs ours and the layouts with full fine-tuning or QLoRA instead of LoRA.

    python bench/train_throughput.py [--variants baseline,ours,auto-2gpu,zero3-2gpu] [--out FILE]
    python bench/train_throughput.py --tiny   # a CPU smoke run of every code path on a tiny model

Needs CUDA GPUs (N for a <layout>-<N>gpu variant), deepspeed and liger-kernel and this repository's
packages importable (`make install`; on a bare GPU machine `make gpu-bundle` here, then `source
bench/gpu_bundle.sh env` there: PYTHONPATH=~/gpu/site, and the commit recorded from the bundle),
~20 GB of disk for the random model and ~1 minute per variant.

To try DeepSpeed settings without editing its config, BENCH_ZERO3_OPTIONS (JSON) is merged into the
ZeRO-3 variants' config, e.g. '{"zero_optimization": {"reduce_bucket_size": 1e7}}'. BENCH_PROFILE=FILE
writes a torch profiler table of rank 0's last step there.

Prints a table and writes the JSON (card, commit, baseline_tok_s, ours_tok_s, ours_peak_gib, each
variant's speed-up over ours, one row per variant).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from benchlib import LLAMA3_8B, ROOT, TINY, card, commit, make_random_model, version

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYOUTS = ("auto", "zero3", "zero3-replicated", "zero3-hpz")  # the multi-process variants: <layout>-<N>gpu


def synthetic_batch(lengths: tuple[int, int], vocab: int, device: torch.device, seed: int) -> dict[str, Any]:
    """Random token ids (never zeros: they can run faster than real data); loss on the response only."""
    prompt, response = lengths
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (1, prompt + response), generator=generator)
    labels = ids.clone()
    labels[:, :prompt] = -100
    mask = torch.ones_like(ids)
    return {k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": mask, "labels": labels}.items()}


# -- one variant, in this process ------------------------------------------------------------------------
def run_baseline(
    model_dir: Path, device: torch.device, dtype: torch.dtype, grad_ckpt: bool, accumulation: int
) -> Any:
    """The plain recipe: HF model + PEFT LoRA, HF's own loss over full logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").to(
        device
    )
    model.config.use_cache = False
    if grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(
        model,
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=PROJECTIONS, task_type="CAUSAL_LM"),
    )
    model.train()  # from_pretrained returns eval mode, where transformers skips gradient checkpointing
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=device.type == "cuda"
    )

    def step(batch: dict[str, Any], boundary: bool) -> float:
        # no attention_mask: with one (even all ones) transformers 5.17 builds a dense 12k × 12k mask,
        # SDPA falls off its fast kernels and the step runs out of 80 GB; this is the baseline's best case
        loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        (loss / accumulation).backward()
        if boundary:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def run_ours(
    model_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    liger: str,
    tiny: bool,
    layout: str,
    method: str,
    accumulation: int,
) -> tuple[Any, dict[str, Any]]:
    """This training job's path: its spec and the recipe's own execution (trainjob/execution.py: model
    loading, loss module, optimizer, clipping and schedule, or in a zero3 layout the DeepSpeed engine),
    each micro-batch in the recipe's step context. Also returns the layout taken and the peak memory
    the memory model predicts for it."""
    from reviewstack.common.runspec import TrainSpec
    from reviewstack.common.train_memory import ModelShape, Topology, plan
    from reviewstack.trainjob.execution import SingleProcess, Zero3
    from reviewstack.trainjob.kernels import step_context, use_liger

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    spec = TrainSpec(
        run_id="bench",
        dataset="unused",
        base_model=str(model_dir),
        output="unused",
        target_context=12_288,  # PI 1.5, as in the method
        max_prompt_length=11_138 if not tiny else 192,
        max_response_length=1_150 if not tiny else 64,
        device=device.type,
        precision="bf16" if dtype == torch.bfloat16 else "fp32",
        liger=liger,
        method=method,
        layout=layout,
        effective_batch_size=accumulation * world,
        lr_scheduler="constant",
    )
    memory = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else None
    topology = Topology(world, int(os.environ.get("LOCAL_WORLD_SIZE", world)), memory)
    layouts = plan(ModelShape.from_model_dir(model_dir), spec, topology, liger=use_liger(liger, device))
    predicted = {"layout": layouts.chosen, "predicted_peak_gib": round(layouts.chosen_prediction.total, 2)}

    def schedule(optimizer: Any) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)

    if layouts.chosen != "single":
        overrides = json.loads(os.environ.get("BENCH_ZERO3_OPTIONS", "{}"))
        execution: Any = Zero3(
            spec,
            layouts.chosen,
            device,
            dtype,
            schedule,
            accumulation,
            rank,
            world,
            topology.gpus_per_node,
            overrides,
        )
    else:
        execution = SingleProcess(spec, device, dtype, schedule)
    execution.loss_model.train()  # as the recipe does: transformers checkpoints only in training mode
    phases: list[tuple[float, ...]] = []  # forward, backward, optimizer seconds

    def step(batch: dict[str, Any], boundary: bool) -> float:
        marks = [time.perf_counter()]
        with step_context(device, dtype):
            summed, n = execution.forward(batch)
            marks.append(_synced(device))
            execution.backward(summed / (n * accumulation))
            marks.append(_synced(device))
        if boundary:
            execution.step()
        marks.append(_synced(device))
        phases.append(tuple(b - a for a, b in itertools.pairwise(marks)))
        return float(summed.detach()) / n

    step.phases = phases  # type: ignore[attr-defined]
    return step, predicted


def _profile(step: Any, batch: dict[str, Any], out: Path, rank: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        step(batch, boundary=False)
        _synced(batch["input_ids"].device)
    if rank == 0:
        sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
        out.write_text(prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=60))


def _synced(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def measure(args: argparse.Namespace) -> dict[str, Any] | None:
    tiny = args.tiny
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = torch.device("cpu") if tiny else torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    dtype = torch.float32 if tiny else torch.bfloat16
    lengths = (192, 64) if tiny else (11_138, 1_150)
    model_dir = Path(args.model_dir)
    # the method's effective batch, split over the ranks: an optimizer step every `accumulation` micro-batches
    accumulation = max(1, args.effective_batch // world)
    predicted: dict[str, Any] = {}
    if args.variant == "baseline":
        step = run_baseline(model_dir, device, dtype, grad_ckpt=True, accumulation=accumulation)
    elif args.variant in ("ours", "ours-no-liger") or args.variant in LAYOUTS:
        liger = "off" if args.variant == "ours-no-liger" or tiny else "on"
        layout = "single" if args.variant.startswith("ours") else args.variant
        step, predicted = run_ours(model_dir, device, dtype, liger, tiny, layout, args.method, accumulation)
    else:
        raise SystemExit(f"unknown variant {args.variant}")
    vocab = (TINY if tiny else LLAMA3_8B)["vocab_size"]
    # warm-up micro-batches, then whole optimizer steps: any `accumulation` consecutive micro-batches hold
    # exactly one update, wherever the warm-up left the count
    count = args.warmup + args.steps * accumulation
    batches = [synthetic_batch(lengths, vocab, device, rank * count + i) for i in range(count)]
    losses, times = [], []
    for i, batch in enumerate(batches):
        if i == args.warmup and device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        losses.append(step(batch, boundary=(i + 1) % accumulation == 0))
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - started)
    windows = [sum(times[k : k + accumulation]) for k in range(0, len(times), accumulation)]
    seconds = statistics.median(windows)  # one optimizer step: `accumulation` micro-batches and the update
    if os.environ.get("BENCH_PROFILE"):  # one more, untimed micro-batch under the profiler
        _profile(step, batches[-1], Path(os.environ["BENCH_PROFILE"]), rank)
    tokens = sum(lengths) * accumulation * world  # every rank trains its own sequences each step
    peaks = torch.zeros(world, dtype=torch.float64, device=device)
    peaks[rank] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    if world > 1:
        torch.distributed.all_reduce(peaks)
    peak = float(peaks.max())
    if rank != 0:
        return None
    phases = getattr(step, "phases", [])[args.warmup :]
    breakdown = (
        {
            name: round(statistics.median(p[i] for p in phases), 4)
            for i, name in enumerate(("forward_s", "backward_s", "optimizer_s"))
        }
        if phases
        else {}
    )
    if predicted and peak:
        predicted["prediction_error"] = round(peak / predicted["predicted_peak_gib"] - 1, 3)
    return {
        **breakdown,
        **predicted,
        "variant": args.variant if args.variant not in LAYOUTS else f"{args.variant}-{world}gpu",
        "method": args.method if args.variant != "baseline" else "lora",
        "gpus": world,
        "accumulation": accumulation,
        "tokens_per_step": tokens,
        "step_s": round(seconds, 4),
        "step_s_spread": round(max(windows) - min(windows), 4),
        "micro_s": round(statistics.median(times), 4),
        "micro_s_spread": round(max(times) - min(times), 4),
        "tok_s": round(tokens / seconds, 1),
        "peak_gib": round(peak, 2),
        "peak_gib_per_gpu": [round(p, 2) for p in peaks.tolist()],
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
    }


# -- the driver ------------------------------------------------------------------------------------------
def run_variant(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--one",
        variant,
        "--model-dir",
        args.model_dir,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--effective-batch",
        str(args.effective_batch),
        "--method",
        args.method,
    ]
    layout, _, processes = variant.rpartition("-")
    if layout in LAYOUTS and processes.endswith("gpu"):  # <layout>-<N>gpu: N processes under torchrun
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
        command = [*launch, processes.removesuffix("gpu"), *command[1:3], layout, *command[4:]]
    if args.tiny:
        command.append("--tiny")
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-4000:])
        errors = [line for line in result.stderr.splitlines() if "Error" in line] or ["failed"]
        return {"variant": variant, "error": errors[-1][:200]}
    row = json.loads(result.stdout.strip().splitlines()[-1])
    if layout in LAYOUTS:  # DeepSpeed stops prefetching weights when its trace is invalidated
        row["trace_invalidations"] = result.stderr.count("Invalidate trace cache")
    return row


def report(rows: list[dict[str, Any]], extra: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"training throughput, {extra['tokens_per_sequence']:,}-token sequences, "
        f"{extra['effective_batch']} per optimizer step — {extra['card']}"
    )
    columns = (
        "variant",
        "layout",
        "gpus",
        "micro-batches",
        "step s",
        "tok/s",
        "× baseline",
        "× ours",
        "peak GiB",
        "predicted",
        "loss first→last",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("variant", "layout") else "right")
    tok_s = {r["variant"]: r["tok_s"] for r in rows if "tok_s" in r}
    for row in rows:
        if "error" in row:
            table.add_row(row["variant"], *[""] * (len(columns) - 2), row["error"][:60])
            continue
        table.add_row(
            row["variant"],
            row.get("layout", ""),
            str(row["gpus"]),
            f"{row['accumulation']} × {row['micro_s']:.3f} s",
            f"{row['step_s']:.3f}",
            f"{row['tok_s']:,.0f}",
            f"{row['tok_s'] / tok_s['baseline']:.2f}" if "baseline" in tok_s else "",
            f"{row['tok_s'] / tok_s['ours']:.2f}" if "ours" in tok_s else "",
            f"{row['peak_gib']:.1f}",
            f"{row['predicted_peak_gib']:.1f} ({row['prediction_error']:+.0%})"
            if "prediction_error" in row
            else "",
            f"{row['loss_first']:.3f}→{row['loss_last']:.3f}",
        )
    Console().print(table)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="baseline,ours,auto-2gpu,zero3-replicated-2gpu,zero3-2gpu")
    parser.add_argument(
        "--method", choices=("lora", "full", "qlora"), default="lora", help="what ours trains"
    )
    parser.add_argument("--model-dir", default="/tmp/reviewstack-bench/llama3-8b-random")
    parser.add_argument("--steps", type=int, default=2, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed micro-batches first")
    parser.add_argument(
        "--effective-batch",
        type=int,
        default=16,
        help="sequences per optimizer step (the method's 16); 1 steps the optimizer after every sequence",
    )
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on a tiny model")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_throughput.json"))
    parser.add_argument("--one", metavar="VARIANT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.variant = args.one
        if args.one == "make-model":
            make_random_model(Path(args.model_dir), args.tiny)
            return
        row = measure(args)
        if row is not None:
            print(json.dumps(row), flush=True)
        return
    if args.tiny and args.model_dir == parser.get_default("model_dir"):
        args.model_dir = "/tmp/reviewstack-bench/llama3-tiny-random"
    # in a child process: this one must hold no GPU memory while the variants run
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--one", "make-model", "--model-dir", args.model_dir]
        + (["--tiny"] if args.tiny else []),
        check=True,
    )
    created_s = time.perf_counter() - started
    rows: list[dict[str, Any]] = []
    for variant in args.variants.split(","):
        rows.append(run_variant(variant, args))
        print(json.dumps(rows[-1]), flush=True)
        summary = summarise(rows, args, created_s)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # written after every variant: a run cut
        Path(args.out).write_text(json.dumps({**summary, "rows": rows}, indent=2) + "\n")  # short keeps rows
    report(rows, summary, Path(args.out))


def summarise(rows: list[dict[str, Any]], args: argparse.Namespace, created_s: float) -> dict[str, Any]:
    by = {r["variant"]: r for r in rows if "tok_s" in r}
    extra = {
        "benchmark": "train_throughput",
        "date": datetime.now(UTC).date().isoformat(),
        "card": card(),
        "commit": commit(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "peft": version("peft"),
        "deepspeed": version("deepspeed"),
        "liger_kernel": version("liger_kernel"),
        "shape": "Llama-3-8B (random weights)",
        "tokens_per_sequence": 12_288 if not args.tiny else 256,
        "effective_batch": args.effective_batch,
        "method": args.method,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "targets": PROJECTIONS},
        "random_model_created_s": round(created_s, 1),
        "baseline_tok_s": by.get("baseline", {}).get("tok_s"),
        "ours_tok_s": by.get("ours", {}).get("tok_s"),
        "ours_peak_gib": by.get("ours", {}).get("peak_gib"),
        "baseline_peak_gib": by.get("baseline", {}).get("peak_gib"),
    }
    if extra["baseline_tok_s"] and extra["ours_tok_s"]:
        extra["ours_speedup"] = round(extra["ours_tok_s"] / extra["baseline_tok_s"], 3)
    # every variant against this trainer's own one-GPU path, the fastest one (the stricter comparison:
    # DeepSpeed's overhead included)
    if extra["ours_tok_s"]:
        extra["speedup_over_ours"] = {
            name: round(row["tok_s"] / extra["ours_tok_s"], 3) for name, row in by.items() if name != "ours"
        }
    return extra


if __name__ == "__main__":
    main()
