"""Benchmark: decode tokens/s of the embedded engine at an 11,000-token context, Llama-3-8B shape.

Random weights (no hub), 11,000-token prompts, 256 new tokens each, greedy, in one process:
- baseline: transformers' `model.generate` on one request (what a user would write);
- engine, one request: the engine's own loop (scheduler, sampling, detokenizing, the penalty) on the
  same weights, decode timed from its first token to its last, prefill apart;
- engine, 16 requests at once: all 16 prefilled first, then aggregate decode tokens/s;
- the same two on eager PyTorch ops instead of the Triton decode kernels (GPU only), and one decode step
  through both paths on the same cache: how far apart their logits are;
- the same two with the refusal penalty on (λ = 1): its overhead. Random weights write random tokens,
  so this is the cost of following every request's text, which is what the penalty costs outside a
  refusal;
- the same two with the repetition penalty 1.1 (greedy): the cost of the device-side seen-token masks;
- the same two with the shipped reviewer's decoding (temperature 0.7, top-p 0.9, repetition penalty 1.1,
  seeded sampling): every sampling stage at once.
Each figure is printed beside the memory-bandwidth limit: every decode step reads all weights plus every
running request's KV cache.

    python bench/serve_throughput.py [--out FILE] [--tokenizer DIR]
    python bench/serve_throughput.py --tiny   # a CPU smoke run of every code path on a tiny model

Needs a CUDA GPU, this repository's packages importable (`make install`; on a bare GPU machine `make
gpu-bundle` here, then `source bench/gpu_bundle.sh env` there: PYTHONPATH=~/gpu/site, and the commit
recorded from the bundle), the Llama-3 tokenizer (`make tokenizer`; from the bundle: --tokenizer
.gpu/bundle/tokenizer), ~16 GB of disk for the random model. Prints a table and writes the JSON (card,
commit, baseline_bs1_tok_s, bs1_tok_s, agg16_tok_s, penalty_overhead_pct, repetition_overhead_pct_agg16,
...).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from benchlib import ROOT, card, commit, make_random_model, version

from reviewstack.generation.sampling import SamplingSettings

SHIPPED = ", T 0.7, top-p 0.9, rp 1.1, sampled"
# each decoding measured, by the suffix of its rows (greedy unless named)
VARIANTS: list[tuple[str, SamplingSettings]] = [
    ("", SamplingSettings()),
    (", penalty λ=1", SamplingSettings(refusal_penalty=1.0)),
    (", repetition penalty 1.1", SamplingSettings(repetition_penalty=1.1)),
    (SHIPPED, SamplingSettings(do_sample=True, temperature=0.7, top_p=0.9, repetition_penalty=1.1, seed=0)),
]
# bytes/s of HBM, from the vendors' data sheets
BANDWIDTH = {"H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H200": 4.8e12}


def bandwidth() -> float | None:
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return next((b for key, b in BANDWIDTH.items() if key in name), None)


def prompts(count: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1000, vocab - 1000, (length,), generator=generator).tolist() for _ in range(count)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def baseline(model: Any, prompt: list[int], new: int) -> dict[str, float]:
    """transformers' generate, batch 1: prefill alone (one new token), then the whole request."""
    ids = torch.tensor([prompt], device=model.device)
    options = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    model.generate(ids[:, :64], max_new_tokens=2, **options)  # CUDA context, kernels, allocator: warm
    timings = []
    for tokens in (1, new):
        sync()
        started = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **options)
        sync()
        timings.append(time.perf_counter() - started)
    prefill, total = timings
    return {"prefill_s": prefill, "decode_tok_s": (new - 1) / (total - prefill)}


async def engine_run(engine: Any, batch: list[list[int]], new: int, settings: Any) -> dict[str, float]:
    """Submit every prompt at once; decode is timed from the moment all have their first token."""
    from reviewstack.generation.engine import EndEvent, ErrorEvent, Request

    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    handles = [engine.submit(Request(p, new, settings), loop) for p in batch]
    firsts, ends = [], []

    async def follow(handle: Any) -> None:
        first = True
        while True:
            event = await handle.events.get()
            if isinstance(event, ErrorEvent):
                raise RuntimeError(event.message)
            if first:
                firsts.append(time.perf_counter())
                first = False
            if isinstance(event, EndEvent):
                ends.append(time.perf_counter())
                return

    await asyncio.gather(*(follow(h) for h in handles))
    all_prefilled = max(firsts)
    return {
        "prefill_s": all_prefilled - started,
        "decode_tok_s": len(batch) * (new - 1) / (max(ends) - all_prefilled),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on a tiny model")
    parser.add_argument("--model-dir", default="/tmp/reviewstack-bench/llama3-8b-random")
    parser.add_argument("--tokenizer", help="Llama-3 tokenizer directory (default: the installed one)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve_throughput.json"))
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reviewstack.common.tokenizer import default_tokenizer_dir
    from reviewstack.generation.engine import Engine
    from reviewstack.generation.runner import DecoderRunner
    from reviewstack.penalty.core import PenaltyTable
    from reviewstack.penalty.surfaces import token_surfaces

    tiny = args.tiny
    length, new, batch = (200, 16, 4) if tiny else (11_000, 256, 16)
    model_dir = Path(args.model_dir + ("-tiny" if tiny else ""))
    make_random_model(model_dir, tiny)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(args.tokenizer or default_tokenizer_dir()) / name, model_dir / name)
    device = "cpu" if tiny else "cuda"
    dtype = torch.float32 if tiny else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    work = prompts(batch + 1, length, model.config.vocab_size)

    rows: dict[str, dict[str, float]] = {"baseline, batch 1": baseline(model, work[0], new)}
    print(json.dumps(rows), flush=True)
    table = PenaltyTable(token_surfaces(tokenizer))
    runner = DecoderRunner(model, max_batch=batch, max_total_tokens=length + new)
    started = time.perf_counter()
    graphs = runner.warm_up([1, batch])
    capture_s = time.perf_counter() - started
    checks = {"cuda_graphs": graphs, "capture_s": round(capture_s, 1), "triton_kernels": runner.fused}
    if runner.fused:
        checks["logits"] = compare_decode_paths(runner, work[0][:4000])
    print(json.dumps(checks), flush=True)
    options = {"max_prefill_tokens": batch * length, "penalty_table": table}
    engine_rows(rows, Engine(runner, tokenizer, **options), work, new, VARIANTS, "")
    kv_bytes, fused = runner.kv_bytes_per_token, runner.fused
    del runner
    if fused:  # the same engine on eager PyTorch ops: what the kernels bring
        torch.cuda.empty_cache()
        eager = DecoderRunner(model, max_batch=batch, max_total_tokens=length + new, kernels="torch")
        eager.warm_up([1, batch])
        engine_rows(rows, Engine(eager, tokenizer, **options), work, new, VARIANTS[:1], ", eager ops")
    limits = _limits(model, kv_bytes, length + new // 2, batch)
    summary = _summary(rows, limits, batch, tiny, checks, length, new)
    _report(rows, limits, summary, batch)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")


def engine_rows(
    rows: dict[str, dict[str, float]],
    engine: Any,
    work: list[list[int]],
    new: int,
    variants: list[tuple[str, Any]],
    label: str,
) -> None:
    """Batch 1 and all-at-once runs of `engine` (prefilling every request before decoding: steady-state
    decode), for each decoding variant; random weights may write an end token, so none ends a request
    early."""
    engine.eos_ids = set()
    engine.start()
    try:
        for name, settings in variants:
            suffix = label + name
            asyncio.run(engine_run(engine, [work[1]], new, settings))  # warm: allocator, first replays
            rows[f"engine, batch 1{suffix}"] = asyncio.run(engine_run(engine, [work[1]], new, settings))
            rows[f"engine, {len(work) - 1} at once{suffix}"] = asyncio.run(
                engine_run(engine, work[1:], new, settings)
            )
            print(json.dumps({k: rows[k] for k in list(rows)[-2:]}), flush=True)  # a cut run still tells
    finally:
        engine.stop()


@torch.inference_mode()
def compare_decode_paths(runner: Any, prompt: list[int]) -> dict[str, float | bool]:
    """One decode step through the Triton kernels and the same step through eager PyTorch, on the same
    cache, each against transformers' own forward of the whole sequence: in bf16 all three differ, and
    the kernels should be no further from transformers than the eager path is."""
    token = int(runner.prefill(0, prompt).argmax())
    fused = runner.decode([0], [token], [len(prompt)])[0]
    runner.fused = False  # the same weights and cache; this step captures its own graph
    try:
        eager = runner.decode([0], [token], [len(prompt)])[0]
    finally:
        runner.fused = True
    ids = torch.tensor([[*prompt, token]], device=runner.device)
    reference = runner.model(ids, logits_to_keep=1).logits[0, -1].float()

    def difference(a: torch.Tensor, b: torch.Tensor) -> float:
        return round(float((a.double() - b.double()).norm() / b.double().norm()), 5)

    return {
        "fused_vs_transformers": difference(fused, reference),
        "eager_vs_transformers": difference(eager, reference),
        "fused_vs_eager": difference(fused, eager),
        "same_argmax": bool(fused.argmax() == eager.argmax() == reference.argmax()),
    }


def _limits(model: Any, kv_bytes_per_token: int, context: int, batch: int) -> dict[int, float | None]:
    """Decode tokens/s if each step only read weights and KV cache at full memory bandwidth."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    limit = bandwidth()
    return {
        b: (b * limit / (weights + b * context * kv_bytes_per_token)) if limit else None for b in (1, batch)
    }


def _summary(
    rows: dict[str, dict[str, float]],
    limits: dict[int, float | None],
    batch: int,
    tiny: bool,
    checks: dict[str, Any],
    length: int,
    new: int,
) -> dict[str, Any]:
    bs1, agg = rows["engine, batch 1"], rows[f"engine, {batch} at once"]

    def overhead(base: dict[str, float], variant: str) -> float:
        return round(100 * (base["decode_tok_s"] / rows[variant]["decode_tok_s"] - 1), 2)

    return {
        "benchmark": "serve_throughput",
        "date": datetime.now(UTC).date().isoformat(),
        "card": card(),
        "commit": commit(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "shape": "Llama-3-8B (random weights)" if not tiny else "tiny Llama (random weights)",
        "prompt_tokens": length,
        "new_tokens": new,
        "baseline_bs1_tok_s": round(rows["baseline, batch 1"]["decode_tok_s"], 1),
        "baseline_prefill_s": round(rows["baseline, batch 1"]["prefill_s"], 3),
        "bs1_tok_s": round(bs1["decode_tok_s"], 1),
        "bs1_prefill_s": round(bs1["prefill_s"], 3),
        f"agg{batch}_tok_s": round(agg["decode_tok_s"], 1),
        f"agg{batch}_prefill_s": round(agg["prefill_s"], 3),
        "penalty_overhead_pct": overhead(bs1, "engine, batch 1, penalty λ=1"),
        f"penalty_overhead_pct_agg{batch}": overhead(agg, f"engine, {batch} at once, penalty λ=1"),
        "repetition_overhead_pct": overhead(bs1, "engine, batch 1, repetition penalty 1.1"),
        f"repetition_overhead_pct_agg{batch}": overhead(
            agg, f"engine, {batch} at once, repetition penalty 1.1"
        ),
        "sampled_overhead_pct": overhead(bs1, f"engine, batch 1{SHIPPED}"),
        f"sampled_overhead_pct_agg{batch}": overhead(agg, f"engine, {batch} at once{SHIPPED}"),
        "bandwidth_limit_tok_s": {str(b): (round(v, 1) if v else None) for b, v in limits.items()},
        "cuda_graphs": checks["cuda_graphs"],
        "cuda_graph_capture_s": checks["capture_s"],
        "triton_kernels": checks["triton_kernels"],
        "logits_check": checks.get("logits"),
        **_eager_ops(rows, batch),
        "rows": {name: {k: round(v, 3) for k, v in row.items()} for name, row in rows.items()},
    }


def _eager_ops(rows: dict[str, dict[str, float]], batch: int) -> dict[str, float]:
    """The engine's figures on eager PyTorch ops, when measured (the kernels' ablation)."""
    names = {
        "bs1_eager_ops_tok_s": "engine, batch 1, eager ops",
        f"agg{batch}_eager_ops_tok_s": f"engine, {batch} at once, eager ops",
    }
    return {key: round(rows[name]["decode_tok_s"], 1) for key, name in names.items() if name in rows}


def _report(
    rows: dict[str, dict[str, float]], limits: dict[int, float | None], summary: dict[str, Any], batch: int
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"decode at {summary['prompt_tokens']:,} tokens of context — {summary['card']}")
    for column in ("run", "prefill s", "decode tok/s", "× baseline", "% of bandwidth limit"):
        table.add_column(column, justify="left" if column == "run" else "right")
    base = rows["baseline, batch 1"]["decode_tok_s"]
    for name, row in rows.items():
        limit = limits.get(batch if f"{batch} at once" in name else 1)
        table.add_row(
            name,
            f"{row['prefill_s']:.2f}",
            f"{row['decode_tok_s']:,.1f}",
            f"{row['decode_tok_s'] / base:.2f}",
            f"{100 * row['decode_tok_s'] / limit:.0f}" if limit else "",
        )
    Console().print(table)
    for name, key in (
        ("refusal penalty", "penalty"),
        ("repetition penalty", "repetition"),
        ("shipped", "sampled"),
    ):
        at_one, at_all = summary[f"{key}_overhead_pct"], summary[f"{key}_overhead_pct_agg{batch}"]
        print(f"{name} overhead: {at_one} % at batch 1, {at_all} % at {batch} at once")


if __name__ == "__main__":
    main()
