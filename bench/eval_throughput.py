"""Benchmark: an evaluation of 200 NeurIPS 2025 papers × ~4 human reviews with a matcher (the default, or
`--matcher pair`), on 2 CPU cores (target ≤ 90 s, the matcher's model loading excluded), with the human
leave-one-out, the sanity anchor (Liang et al. 2023: ≈ 35 % human–human overlap on ICLR);
`--all-papers` repeats it over all 400 papers.

    .venv/bin/python bench/eval_throughput.py [--archive ../shared/data/neurips2025.tar.gz] [--dataset DIR]
        [--all-papers] [--matcher embedded|pair]

The evaluated system is "targets": each paper's human reviews as data-prep distils them into one
7-aspect review, the model's training target, written as review-service batch records. Its points come
from the human ones, so its recall and precision are an upper reference, not a model's: here it is the
workload (one structured review per paper, plus every reviewer's leave-one-out) that matters.
Untimed, the generic-review control follows: the same canned review for every paper, evaluated the same
way; a matcher a verdict can rest on gives it a lower precision than the human reviewers' leave-one-out.
Prints a table and writes bench/results/eval_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchlib import ROOT, commit
from rich.console import Console
from rich.table import Table

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.logging import configure_logging
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import open_store


def build(archive: Path, work: Path) -> Path:
    """The dataset (ground truth + targets) of the whole set: not timed, data-prep has its own bench."""
    from reviewstack.dataprep.build import build_dataset
    from reviewstack.dataprep.config import BuildConfig

    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    source = next(work.glob("*/papers")).parent
    config = BuildConfig(
        sources=[str(source)], output=str(work / "store"), name="neurips2025", paper_version="decision"
    )
    result = build_dataset(config, StoreSettings())
    return work / "store" / "datasets" / "neurips2025" / result.version


def write_targets(dataset: Path, store_dir: Path, system: str, generic: bool = False) -> int:
    """Each record's target review as a review-service batch record, reviews/<system>/<paper-id>.json;
    with `generic`, the same canned review for every paper instead (bench/matcher_agreement.py's
    GENERIC_REVIEW, all in the weaknesses aspect): the floor a review that reads no paper reaches."""
    from matcher_agreement import GENERIC_REVIEW

    store = open_store(str(store_dir))
    schema = AspectSchema.SEVEN
    count = 0
    for split in ("train", "val", "test"):
        for line in (dataset / f"{split}.jsonl").read_text().splitlines():
            record = json.loads(line)
            aspects = [
                {
                    "name": aspect.criterion,
                    "items": [i for i in record["aspects"].get(aspect.key, []) if i != "<No related terms>"],
                    "empty": record["aspects"].get(aspect.key) in ([], ["<No related terms>"]),
                }
                for aspect in schema.aspects
            ]
            if generic:
                aspects = [
                    {"name": a.criterion, "items": list(GENERIC_REVIEW) if i == 0 else [], "empty": i != 0}
                    for i, a in enumerate(schema.aspects)
                ]
            review = {
                "paper_id": record["paper_id"],
                "system": system,
                "review": {
                    "aspects": aspects,
                    "text": "\n".join(GENERIC_REVIEW) if generic else record["response"],
                },
                "lineage": {"model": "data-prep targets", "refusal_penalty": 0.0},
            }
            store.put_bytes(f"reviews/{system}/{record['paper_id']}.json", json.dumps(review).encode())
            count += 1
    return count


def timed_evaluation(
    store_dir: Path, dataset: Path, papers: int, matcher: Any, system_name: str = "targets"
) -> dict[str, Any]:
    from reviewstack.evaluation.evaluate import evaluate
    from reviewstack.evaluation.report import write_report
    from reviewstack.evaluation.sources import align_papers, load_human, load_system

    settings = StoreSettings()
    times: dict[str, float] = {}
    started = time.perf_counter()
    system = load_system(system_name, str(store_dir / "reviews" / system_name), settings)
    human = load_human(str(dataset), settings)
    aligned, exclusions = align_papers([system], human)
    chosen = sorted(aligned)[:papers]
    times["load_s"] = time.perf_counter() - started
    stages: dict[str, float] = {}

    def progress(stage: str, done: int = 0, total: int = 0, message: str = "") -> None:
        stages.setdefault(stage, time.perf_counter())

    mark = time.perf_counter()
    report = evaluate([system], human, matcher, papers=chosen, exclusions=exclusions, progress=progress)
    times["evaluate_s"] = time.perf_counter() - mark
    times["total_s"] = time.perf_counter() - started
    mark = time.perf_counter()
    write_report(report, open_store(str(store_dir)), f"evaluations/bench-{papers}")
    times["report_s"] = time.perf_counter() - mark
    human_reviews = sum(len(human.reviews[p]) for p in chosen)
    human_points = sum(len(r.points) for p in chosen for r in human.reviews[p])
    return {
        "papers": len(chosen),
        "human_reviews": human_reviews,
        "human_points": human_points,
        "times": {k: round(v, 2) for k, v in times.items()},
        "report": report,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", default=str(ROOT.parent / "shared" / "data" / "neurips2025.tar.gz"))
    parser.add_argument("--dataset", help="an already built dataset folder of the set (skips the build)")
    parser.add_argument("--papers", type=int, default=200)
    parser.add_argument("--all-papers", action="store_true", help="also evaluate all 400 papers")
    parser.add_argument("--matcher", choices=("embedded", "pair"), default="embedded")
    parser.add_argument("--out", help="default: bench/results/eval_throughput[_pair].json")
    args = parser.parse_args()
    configure_logging("WARNING")
    from reviewstack.evaluation.matching import default_matcher
    from reviewstack.evaluation.matching_pair import pair_matcher
    from reviewstack.evaluation.summary import headline

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset = Path(args.dataset) if args.dataset else build(Path(args.archive), work)
        write_targets(dataset, work / "bench-store", "targets")
        started = time.perf_counter()
        matcher = pair_matcher() if args.matcher == "pair" else default_matcher()
        load_model_s = time.perf_counter() - started
        timed = timed_evaluation(work / "bench-store", dataset, args.papers, matcher)
        # what the pair model read in the timed evaluation (the pair matcher only)
        pair_model = {k: round(v, 2) for k, v in getattr(matcher, "last_stats", {}).items()}
        everything = timed
        if args.all_papers:
            everything = timed_evaluation(work / "bench-store", dataset, 10_000, matcher)
        write_targets(dataset, work / "bench-store", "generic", generic=True)
        generic = timed_evaluation(work / "bench-store", dataset, args.papers, matcher, "generic")
    summary = {
        "benchmark": "eval_throughput",
        "date": datetime.now(UTC).date().isoformat(),
        "commit": commit(),
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "matcher": {"name": matcher.name, "version": matcher.version, **matcher.describe()},
        "matcher_load_s": round(load_model_s, 1),
        "pair_model": pair_model,
        "timed": {k: v for k, v in timed.items() if k != "report"},
        "all_papers": {k: v for k, v in everything.items() if k != "report"},
        "headline_timed": headline(timed["report"]),
        "headline_all": headline(everything["report"]),
        "generic_review": headline(generic["report"]),
    }
    table = Table(title=f"evaluation of {timed['papers']} papers ({timed['human_reviews']} human reviews)")
    for column in ("what", "value"):
        table.add_column(column)
    table.add_row("matcher model load", f"{load_model_s:.1f} s (excluded)")
    for key, value in timed["times"].items():
        table.add_row(key, f"{value:.1f} s")
    if pair_model:
        read, seconds = pair_model["pairs_read"], pair_model["pair_model_s"]
        table.add_row("pair model", f"{read:,} pairs read in {seconds:.1f} s")
    for row in summary["headline_all"]:
        table.add_row(
            f"{row['name']} (all {row['papers']} papers)",
            f"recall {row['recall']:.3f} [{row['recall_low']:.3f}, {row['recall_high']:.3f}], "
            f"precision {row['precision']:.3f} [{row['precision_low']:.3f}, {row['precision_high']:.3f}]",
        )
    for row in summary["generic_review"]:
        table.add_row(
            f"{row['name']} (control, untimed)",
            f"hits {row['hits']:.2f} a paper, precision {row['precision']:.3f} "
            f"[{row['precision_low']:.3f}, {row['precision_high']:.3f}]",
        )
    Console().print(table)
    name = "eval_throughput" + ("" if args.matcher == "embedded" else f"_{args.matcher}")
    out = Path(args.out or ROOT / "bench" / "results" / f"{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
