"""Benchmark: one sampling step of the engine for 16 requests over Llama-3's 128,256-token vocabulary.

What the decode loop pays to choose the next tokens, apart from the model: the batched, device-side
sampler (`reviewstack.generation.sampling.SlotSampler`) against the per-row host loop it replaced, kept
here as the baseline: the repetition penalty rebuilt from each row's seen ids (`sorted(set(seen))`, an
upload and an indexed write per row per step), then temperature / top-p and sampling row by row. Each
request has an 11,000-token prompt; timed are `steps` consecutive steps, the seen tokens growing as
they would. Three decodings: greedy, greedy with the repetition penalty 1.1, and the shipped reviewer's
(temperature 0.7, top-p 0.9, repetition penalty 1.1, seeded sampling).

    python bench/sampling_step.py [--device cuda] [--out FILE]
    python bench/sampling_step.py --tiny   # a smoke run of both paths: 4 requests, a 4,096-token vocabulary

Runs on a CPU or a GPU (`--device`, default cuda when there is one); needs this repository's packages
importable (`make install`; on a bare GPU machine `source bench/gpu_bundle.sh env`: PYTHONPATH=~/gpu/site,
and the commit recorded from the bundle). Prints a table and writes the JSON (card, commit, ms per step
of each path and decoding).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from benchlib import ROOT, card, commit

from reviewstack.generation.sampling import FLOAT32_MAX, SamplingSettings, SlotSampler

FULL = {"vocab": 128_256, "batch": 16, "prompt": 11_000}
TINY = {"vocab": 4_096, "batch": 4, "prompt": 500}
DECODINGS = {
    "greedy": SamplingSettings(),
    "greedy, repetition penalty 1.1": SamplingSettings(repetition_penalty=1.1),
    "T 0.7, top-p 0.9, rp 1.1, sampled": SamplingSettings(
        do_sample=True, temperature=0.7, top_p=0.9, repetition_penalty=1.1
    ),
}


class HostLoop:
    """The per-row sampler the engine had before: each row's state in Python lists, one row at a time."""

    def __init__(
        self, settings: SamplingSettings, prompts: list[list[int]], device: torch.device, vocab: int
    ) -> None:
        self.settings = settings
        self.seen = [list(p) for p in prompts]
        self.generators = [torch.Generator(device=device).manual_seed(i) for i in range(len(prompts))]

    def choose(self, logits: torch.Tensor) -> list[int]:
        s = self.settings
        for i, seen in enumerate(self.seen):
            if s.repetition_penalty != 1.0:
                ids = torch.tensor(sorted(set(seen)), device=logits.device)
                values = logits[i, ids]
                penalised = torch.where(
                    values > 0, values / s.repetition_penalty, values * s.repetition_penalty
                )
                logits[i, ids] = penalised.clamp(-FLOAT32_MAX, FLOAT32_MAX)
        chosen = logits.log_softmax(-1).argmax(-1)
        for i in range(len(self.seen)):
            if s.do_sample:
                scores = (logits[i] - logits[i].max()) / s.temperature
                ordered, order = scores.sort(descending=True)
                probs = ordered.softmax(-1)
                drop = probs.cumsum(-1) - probs >= s.top_p
                drop[0] = False
                scores = scores.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
                chosen[i] = torch.multinomial(scores.softmax(-1), 1, generator=self.generators[i])[0]
        tokens = chosen.tolist()
        for seen, token in zip(self.seen, tokens, strict=True):
            seen.append(token)
        return tokens


class DeviceSampler:
    def __init__(
        self, settings: SamplingSettings, prompts: list[list[int]], device: torch.device, vocab: int
    ) -> None:
        self.sampler = SlotSampler(len(prompts), vocab, device)
        for slot, prompt in enumerate(prompts):
            self.sampler.start(slot, SamplingSettings(**{**settings.__dict__, "seed": slot}), prompt)
        self.slots = list(range(len(prompts)))

    def choose(self, logits: torch.Tensor) -> list[int]:
        return [c.token for c in self.sampler.choose(self.slots, logits)]


def time_steps(path: HostLoop | DeviceSampler, logits: torch.Tensor, steps: int) -> float:
    """Median milliseconds of one step (each on a fresh copy of the logits, the copy not timed)."""
    timings = []
    for _ in range(steps):
        work = logits.clone()
        if work.is_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        path.choose(work)  # ends in a device→host copy of the tokens: synchronised
        timings.append(1000 * (time.perf_counter() - started))
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--tiny", action="store_true", help="a smoke run at a small size")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "sampling_step.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    size = TINY if args.tiny else FULL
    vocab, batch = size["vocab"], size["batch"]
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab, (size["prompt"],), generator=generator).tolist() for _ in range(batch)]
    logits = (torch.randn(batch, vocab, generator=generator) * 3).to(device)
    rows = {}
    for name, settings in DECODINGS.items():
        for label, path in (("host loop", HostLoop), ("device sampler", DeviceSampler)):
            runner = path(settings, prompts, device, vocab)
            time_steps(runner, logits, 3)  # warm: allocator, kernels
            rows[f"{name} — {label}"] = round(time_steps(runner, logits, args.steps), 3)
            print(f"{name} — {label}: {rows[f'{name} — {label}']} ms", flush=True)
    summary = {
        "benchmark": "sampling_step",
        "date": datetime.now(UTC).date().isoformat(),
        "card": card() if device.type == "cuda" else "cpu",
        "commit": commit(),
        "torch": torch.__version__,
        "batch": batch,
        "vocab": vocab,
        "prompt_tokens": size["prompt"],
        "ms_per_step": rows,
    }
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"one sampling step, {batch} requests × {vocab:,} tokens — {summary['card']}")
    for column in ("decoding", "host loop ms", "device sampler ms", "×"):
        table.add_column(column, justify="left" if column == "decoding" else "right")
    for name in DECODINGS:
        host, ours = rows[f"{name} — host loop"], rows[f"{name} — device sampler"]
        table.add_row(name, f"{host:.2f}", f"{ours:.2f}", f"{host / ours:.1f}")
    Console().print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
