"""Benchmark: a full data-prep build of the NeurIPS 2025 set (400 papers, 1,615 reviews), embedded
distiller, Llama-3 tokenizer — the issue's target is ≤ 5 minutes on 2 CPU cores.

    .venv/bin/python bench/dataprep_build.py [--archive ../shared/data/neurips2025.tar.gz]

Prints a table of stage times and the manifest's numbers, and writes bench/results/dataprep_build.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.logging import configure_logging
from reviewstack.common.store import open_store
from reviewstack.dataprep.build import build_dataset
from reviewstack.dataprep.config import BuildConfig

ROOT = Path(__file__).resolve().parents[1]


class StageTimer:
    """A progress sink that records when each stage starts."""

    def __init__(self) -> None:
        self.starts: dict[str, float] = {}

    def update(self, stage: str, done: int = 0, total: int = 0, message: str = "") -> None:
        self.starts.setdefault(stage, time.perf_counter())

    def check_cancelled(self) -> None:
        pass

    def durations(self, end: float) -> dict[str, float]:
        stages = sorted(self.starts.items(), key=lambda kv: kv[1])
        ends = [t for _, t in stages[1:]] + [end]
        return {name: round(stop - start, 1) for (name, start), stop in zip(stages, ends, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", default=str(ROOT.parent / "shared" / "data" / "neurips2025.tar.gz"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "dataprep_build.json"))
    args = parser.parse_args()
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.archive) as archive:
            archive.extractall(tmp, filter="data")
        source = next(Path(tmp).glob("*/papers")).parent
        config = BuildConfig(
            sources=[str(source)],
            output=str(Path(tmp) / "store"),
            name="neurips2025",
            paper_version="decision",
        )
        timer = StageTimer()
        start = time.perf_counter()
        result = build_dataset(config, progress=timer)
        wall = time.perf_counter() - start
        records = [
            json.loads(line)
            for split in ("train", "val", "test")
            for line in open_store(result.uri).get_bytes(f"{split}.jsonl").decode().splitlines()
        ]
    checks = {
        "records_read_back": len(records),
        "every_record_has_all_7_aspects": all(
            list(r["aspects"]) == list(AspectSchema.SEVEN.keys) and all(r["aspects"].values())
            for r in records
        ),
        "max_prompt_tokens": max(r["prompt_tokens"] for r in records),
        "max_response_tokens": max(r["response_tokens"] for r in records),
    }
    manifest = result.manifest
    record = {
        "benchmark": "dataprep_build",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "wall_s": round(wall, 1),
        "stages_s": timer.durations(start + wall),
        "counts": manifest["counts"],
        "skipped": manifest["skipped"],
        "tokens": manifest["tokens"],
        "truncation": manifest["truncation"],
        "targets": manifest["targets"],
        "checks": checks,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    console = Console()
    table = Table("measure", "value", title=f"data-prep build, {manifest['counts']['records']} papers")
    table.add_row("wall time", f"{wall:.1f} s ({os.cpu_count()} CPUs)")
    for stage, seconds in record["stages_s"].items():
        table.add_row(f"  {stage}", f"{seconds} s")
    for kind in ("prompt", "response"):
        t = manifest["tokens"][kind]
        table.add_row(f"{kind} tokens p50/p95/max", f"{t['p50']:.0f} / {t['p95']:.0f} / {t['max']:.0f}")
    table.add_row("empty-aspect share", f"{manifest['targets']['empty_aspect_share']:.1%}")
    table.add_row("skipped", str(len(manifest["skipped"])))
    table.add_row("all 7 aspects in every record", str(checks["every_record_has_all_7_aspects"]))
    console.print(table)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
