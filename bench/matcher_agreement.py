"""Benchmark: how often the default point matcher's hit decisions agree with GPT-4's, and how fast it is.

    .venv/bin/python bench/matcher_agreement.py [--archive ../shared/data/marg-alignments-dev.tar.gz]
                                               [--write-calibration] [--repeats 5]

Data: MARG's alignment evaluation (30 ICLR papers; generated comments of three GPT-4 reviewers, lizca /
marg_s / sarg_b; comments extracted from the human reviews; GPT-4's alignments, each proposed in at least
2 of 5 list-alignment runs and confirmed pairwise with relatedness medium or high, `same_meaning`).
A human comment is *hit* when some generated comment of that method is aligned to it; the matcher hits it
when its one-to-one matching keeps a pair with it. Precision / recall / F1 are over the hit decisions of
all (method, human comment) pairs, GPT-4's decisions being the truth.

Two frames: `paper` matches a generated review against all the human comments of the paper at once, as
the evaluation does (headline, and what the shipped constants are fitted on); `review` matches it against
each human review separately, as MARG's alignments were made (`reference_id` counts within one review).

Honest fitting: the combiner and threshold are fitted with cross-validation by paper (5 folds of papers,
`--repeats` shuffles) and the held-out numbers are the headline; in-sample numbers (fitted and measured on
all 30 papers) are reported beside them, and `--write-calibration` ships that all-paper fit. The baseline
is plain cosine of all-MiniLM-L6-v2 embeddings (hit when the best generated comment reaches a threshold),
at its best threshold in-sample and with the threshold chosen on the training folds.

Throughput: the matcher on a workload of the size the evaluation promises (200 papers, ~11,000 human
points, 30 generated points per paper, the matcher pairs evaluate.py makes), on this machine's cores.
Writes bench/results/matcher_agreement.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from benchlib import ROOT, commit
from rich.console import Console
from rich.table import Table
from sklearn.linear_model import LogisticRegression

from reviewstack.common.embeddings import load_embedding_model
from reviewstack.common.errors import InvalidArgument
from reviewstack.evaluation import matching
from reviewstack.evaluation.matching import (
    FEATURES,
    Calibration,
    EmbeddedMatcher,
    Logistic,
    assigned_pairs,
    pair_features,
)
from reviewstack.evaluation.static_model import load_static_model

if TYPE_CHECKING:
    from model2vec import StaticModel

METHODS = ("lizca", "marg_s", "sarg_b")
FRAMES = ("paper", "review")
FOLDS = 5
CALIBRATION_FILE = ROOT / "eval-service" / "reviewstack" / "evaluation" / matching.CALIBRATION


@dataclass
class Unit:
    """One matcher call: a method's generated comments against some human comments of one paper."""

    method: str
    paper: str
    generated: list[str]
    reference: list[str]
    aligned: set[tuple[int, int]] = field(default_factory=set)  # GPT-4's (generated, reference) pairs

    @property
    def hits(self) -> np.ndarray:
        truth = np.zeros(len(self.reference), dtype=bool)
        for _, r in self.aligned:
            truth[r] = True
        return truth


def load_units(folder: Path, frame: str) -> list[Unit]:
    """The units of one frame. MARG's `reference_id` counts within one human review (its README's
    "flattened" is not what the files hold): each alignment is placed by its review and its text."""
    units = []
    for method in METHODS:
        path = folder / method / "output" / "all_results.json"
        if not path.is_file():
            raise InvalidArgument(f"{path} is missing: is {folder} an unpacked marg-alignments-dev?")
        for paper in json.loads(path.read_text()):
            reviews = paper["reference_comments"]
            generated = paper["generated_comments"]["all"]
            aligned: dict[int, set[tuple[int, int]]] = {i: set() for i in range(len(reviews))}
            for a in paper["alignments"]["all"]:
                if not a["pairwise_result"].get("same_meaning"):
                    continue
                owners = [
                    i
                    for i, comments in enumerate(reviews)
                    if a["reference_id"] < len(comments)
                    and comments[a["reference_id"]] == a["reference_comment"]
                ]
                if not owners:
                    raise InvalidArgument(f"{path}: alignment {a['reference_id']} matches no human comment")
                aligned[owners[0]].add((a["predicted_id"], a["reference_id"]))
            if frame == "review":
                for i, comments in enumerate(reviews):
                    if comments:  # one review in the set had no comment extracted: nothing to decide
                        units.append(Unit(method, paper["doc_id"], generated, list(comments), aligned[i]))
            else:
                offsets = np.cumsum([0] + [len(c) for c in reviews])
                flat = [c for comments in reviews for c in comments]
                pairs = {(g, int(offsets[i]) + r) for i in aligned for g, r in aligned[i]}
                units.append(Unit(method, paper["doc_id"], generated, flat, pairs))
    return units


def prf(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    tp = int((truth & predicted).sum())
    precision = tp / max(int(predicted.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {"precision": round(precision, 3), "recall": round(recall, 3), "f1": round(f1, 3)}


def agreement(units: list[Unit], decisions: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """P / R / F1 of hit decisions overall and per generation method."""
    out = {"all": prf(np.concatenate([u.hits for u in units]), np.concatenate(decisions))}
    for method in METHODS:
        keep = [i for i, u in enumerate(units) if u.method == method]
        out[method] = prf(
            np.concatenate([units[i].hits for i in keep]), np.concatenate([decisions[i] for i in keep])
        )
    return out


def folds(units: list[Unit], seed: int) -> list[int]:
    papers = sorted({u.paper for u in units})
    order = np.random.RandomState(seed).permutation(len(papers))
    fold_of = {papers[j]: k % FOLDS for k, j in enumerate(order)}
    return [fold_of[u.paper] for u in units]


# -- the baseline: plain MiniLM cosine ------------------------------------------------------------------
def minilm_best_cosines(frames: dict[str, list[Unit]]) -> tuple[dict[str, list[np.ndarray]], float]:
    """Per unit, each human comment's best cosine over the generated comments (MiniLM, 256 tokens)."""
    model = load_embedding_model(max_seq_length=256)
    texts = sorted({t for units in frames.values() for u in units for t in (*u.generated, *u.reference)})
    start = time.perf_counter()
    vectors = dict(zip(texts, model.encode(texts, batch_size=64, normalize_embeddings=True), strict=True))
    rate = len(texts) / (time.perf_counter() - start)
    best = {
        frame: [
            (np.stack([vectors[t] for t in u.reference]) @ np.stack([vectors[t] for t in u.generated]).T).max(
                1
            )
            for u in units
        ]
        for frame, units in frames.items()
    }
    return best, rate


def best_threshold(truth: np.ndarray, scores: np.ndarray) -> float:
    grid = np.unique(np.quantile(scores, np.linspace(0.5, 0.999, 200)))
    return float(max(grid, key=lambda t: prf(truth, scores >= t)["f1"]))


def baseline(units: list[Unit], best: list[np.ndarray], repeats: int) -> dict[str, object]:
    truth = [u.hits for u in units]
    threshold = best_threshold(np.concatenate(truth), np.concatenate(best))
    insample = agreement(units, [b >= threshold for b in best])
    heldout = []
    for seed in range(repeats):
        fold = folds(units, seed)
        decisions: list[np.ndarray] = [np.zeros(0, dtype=bool)] * len(units)
        for k in range(FOLDS):
            train = [i for i in range(len(units)) if fold[i] != k]
            t = best_threshold(
                np.concatenate([truth[i] for i in train]), np.concatenate([best[i] for i in train])
            )
            for i in range(len(units)):
                if fold[i] == k:
                    decisions[i] = best[i] >= t
        heldout.append(agreement(units, decisions))
    return {"threshold": round(threshold, 3), "insample": insample, "heldout": mean_agreement(heldout)}


# -- the default matcher: fitted combiner + assignment --------------------------------------------------
def unit_features(units: list[Unit], matcher: EmbeddedMatcher) -> list[np.ndarray]:
    index = {t: i for i, t in enumerate(sorted({t for u in units for t in (*u.generated, *u.reference)}))}
    encoded = matcher.encoder.encode(list(index))
    return [
        pair_features(
            encoded.take([index[t] for t in u.generated]), encoded.take([index[t] for t in u.reference])
        )
        for u in units
    ]


def logistic(x: np.ndarray, y: np.ndarray, balanced: bool) -> Logistic:
    mean, scale = x.mean(0), x.std(0) + 1e-9
    weight = "balanced" if balanced else None
    model = LogisticRegression(C=1.0, class_weight=weight, max_iter=5000).fit((x - mean) / scale, y)
    return Logistic(mean, scale, model.coef_[0], float(model.intercept_[0]))


def fit(units: list[Unit], features: list[np.ndarray], rows: list[int]) -> Calibration:
    """Pair stage on GPT-4's aligned pairs (balanced classes: ~1 % are aligned); hit stage on the pairs
    that stage's assignment makes, labelled by whether GPT-4 hit their human comment; then the threshold
    that maximises hit-decision F1 over all human comments of `rows`."""
    x = np.concatenate([features[i].reshape(-1, len(FEATURES)) for i in rows])
    y = np.concatenate([label_matrix(units[i]).ravel() for i in rows])
    pair = logistic(x, y, balanced=True)
    chosen, hit_of_chosen = [], []
    for i in rows:
        _, cols, z = assigned_pairs(features[i], pair)
        chosen.append(z)
        hit_of_chosen.append(units[i].hits[cols])
    cal = Calibration(pair, logistic(np.concatenate(chosen), np.concatenate(hit_of_chosen), False), 1.0)
    kept = np.concatenate([assigned(cal, features[i]) for i in rows])
    truth = np.concatenate([units[i].hits for i in rows])
    grid = np.unique(np.quantile(kept[kept >= 0], np.linspace(0.0, 0.995, 300)))
    threshold = max(grid, key=lambda t: prf(truth, kept >= t)["f1"])
    return Calibration(cal.pair, cal.hit, float(threshold))


def label_matrix(unit: Unit) -> np.ndarray:
    labels = np.zeros((len(unit.generated), len(unit.reference)), dtype=bool)
    for g, r in unit.aligned:
        labels[g, r] = True
    return labels


def assigned(cal: Calibration, features: np.ndarray) -> np.ndarray:
    """Per human comment, the hit probability of the pair the assignment gives it (-1: none). The
    assignment does not depend on the threshold, which only drops pairs, so thresholds can be tried on
    this."""
    _, cols, probability = cal.hit_probabilities(features)
    out = np.full(features.shape[1], -1.0)
    out[cols] = probability
    return out


def decide(cal: Calibration, features: np.ndarray) -> np.ndarray:
    return assigned(cal, features) >= cal.threshold


def matcher_cv(units: list[Unit], features: list[np.ndarray], repeats: int) -> dict[str, object]:
    heldout = []
    for seed in range(repeats):
        fold = folds(units, seed)
        decisions: list[np.ndarray] = [np.zeros(0, dtype=bool)] * len(units)
        for k in range(FOLDS):
            cal = fit(units, features, [i for i in range(len(units)) if fold[i] != k])
            for i in range(len(units)):
                if fold[i] == k:
                    decisions[i] = decide(cal, features[i])
        heldout.append(agreement(units, decisions))
    cal = fit(units, features, list(range(len(units))))
    insample = agreement(units, [decide(cal, f) for f in features])
    return {"heldout": mean_agreement(heldout), "insample": insample, "calibration": cal}


def mean_agreement(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean over repeats; `f1_sd` is the spread over fold shuffles (not a confidence interval)."""
    out = {}
    for key in runs[0]:
        out[key] = {m: round(float(np.mean([r[key][m] for r in runs])), 3) for m in runs[0][key]}
        out[key]["f1_sd"] = round(float(np.std([r[key]["f1"] for r in runs])), 3)
    return out


def shipped(units: list[Unit], model: StaticModel) -> dict[str, dict[str, float]]:
    """The production path end to end: a fresh matcher reading the calibration file, `match_many`."""
    results = EmbeddedMatcher(model, Calibration.load()).match_many(
        [(u.generated, u.reference) for u in units]
    )
    decisions = []
    for unit, matches in zip(units, results, strict=True):
        hit = np.zeros(len(unit.reference), dtype=bool)
        hit[[m.reference for m in matches]] = True
        decisions.append(hit)
    return agreement(units, decisions)


def write_calibration(cal: Calibration, record: dict[str, object]) -> None:
    data = {
        "fitted_by": "bench/matcher_agreement.py --write-calibration: logistic pair stage on GPT-4's aligned "
        "pairs (balanced classes), logistic hit stage on the assigned pairs, threshold maximising "
        "hit-decision F1; all 30 papers, paper frame",
        "data": "marg-alignments-dev (github.com/allenai/marg-reviewer, review_worker/data/paper_align_eval)",
        "commit": record["commit"],
        "date": record["date"],
        "heldout_f1": record["paper"]["matcher"]["heldout"]["all"]["f1"],
        "features": list(FEATURES),
        "pair": cal.pair.to_dict(),
        "hit": cal.hit.to_dict(),  # over the features and the pair logit of an assigned pair
        "threshold": round(cal.threshold, 6),
    }
    CALIBRATION_FILE.write_text(json.dumps(data, indent=2) + "\n")


# -- throughput ---------------------------------------------------------------------------------------
def throughput(units: list[Unit], matcher: EmbeddedMatcher) -> dict[str, float]:
    """200 papers × 4 human reviews × 14 points and 30 generated points each, texts made distinct per
    paper; the matcher pairs of evaluate.py: the review against all human points, against each
    leave-one-out union, and each human review against the others."""
    human = sorted({t for u in units for t in u.reference})
    machine = sorted({t for u in units for t in u.generated})
    pairs = []
    for p in range(200):
        reviews = [
            [f"{human[(p * 56 + r * 14 + i) % len(human)]} (p{p})" for i in range(14)] for r in range(4)
        ]
        generated = [f"{machine[(p * 30 + i) % len(machine)]} (p{p})" for i in range(30)]
        union = [t for r in reviews for t in r]
        pairs.append((generated, union))
        for r in range(4):
            others = [t for j, rv in enumerate(reviews) if j != r for t in rv]
            pairs += [(generated, others), (reviews[r], others)]
    texts = sorted({t for g, r in pairs for t in (*g, *r)})
    n_pairs = sum(len(g) * len(r) for g, r in pairs)
    start, cpu = time.perf_counter(), time.process_time()
    matcher.encoder.encode(texts)
    encode_s, encode_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    matcher.match_many(pairs)
    total_s, total_cpu = time.perf_counter() - start, time.process_time() - cpu
    score_s = max(total_s - encode_s, 1e-9)
    return {
        "texts": len(texts),
        "matcher_pairs": len(pairs),
        "scored_pairs": n_pairs,
        "encode_s": round(encode_s, 2),
        "texts_per_s": round(len(texts) / encode_s),
        "match_many_s": round(total_s, 2),
        "match_many_cpu_s": round(total_cpu, 2),
        "encode_cpu_s": round(encode_cpu, 2),
        "pairs_per_s": round(n_pairs / score_s),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--archive", default=str(ROOT.parent / "shared" / "data" / "marg-alignments-dev.tar.gz")
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "matcher_agreement.json"))
    parser.add_argument("--repeats", type=int, default=5, help="shuffles of the 5 folds of papers")
    parser.add_argument(
        "--write-calibration", action="store_true", help=f"ship the all-paper fit ({CALIBRATION_FILE.name})"
    )
    args = parser.parse_args()
    console = Console() if sys.stdout.isatty() else Console(width=160)  # logs: no squeezed table
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.archive) as archive:
            archive.extractall(tmp, filter="data")
        folder = next(Path(tmp).glob("*/lizca")).parent
        frames = {frame: load_units(folder, frame) for frame in FRAMES}
    console.print("[bold]distilled static model[/] (built once per environment)")
    load_start = time.perf_counter()
    static = load_static_model()
    matcher = EmbeddedMatcher(model=static)  # its calibration is read only when scoring
    load_s = time.perf_counter() - load_start
    console.print("[bold]baseline[/]: all-MiniLM-L6-v2 embeddings of every comment")
    best, minilm_rate = minilm_best_cosines(frames)
    record: dict[str, object] = {
        "benchmark": "matcher_agreement",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": {"cpus": os.cpu_count()},
        "data": {
            frame: {
                "units": len(units),
                "human_comments": sum(len(u.reference) for u in units),
                "gpt4_hits": int(sum(u.hits.sum() for u in units)),
                "gpt4_pairs": sum(len(u.aligned) for u in units),
            }
            for frame, units in frames.items()
        },
    }
    fits = {}
    for frame, units in frames.items():
        console.print(f"[bold]{frame} frame[/]: cross-validating the combiner ({args.repeats}×{FOLDS} folds)")
        features = unit_features(units, matcher)
        result = matcher_cv(units, features, args.repeats)
        fits[frame] = result.pop("calibration")
        static_best = [f[:, :, FEATURES.index("cos")].max(axis=0) for f in features]
        record[frame] = {
            "baseline": baseline(units, best[frame], args.repeats),
            "static_cosine": baseline(units, static_best, args.repeats),  # the encoder alone, same protocol
            "matcher": result,
        }
    if args.write_calibration:
        write_calibration(fits["paper"], record)
        console.print(f"wrote {CALIBRATION_FILE.relative_to(ROOT)}")
    elif not CALIBRATION_FILE.exists():
        raise SystemExit(f"{CALIBRATION_FILE} is missing: run again with --write-calibration to create it")
    for frame, units in frames.items():
        record[frame]["shipped"] = shipped(units, static)
    record["throughput"] = {
        "matcher": throughput(frames["paper"], matcher),
        "matcher_load_s": round(load_s, 1),
        "minilm_texts_per_s": round(minilm_rate, 1),
        "torch_threads": __import__("torch").get_num_threads(),
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print_table(console, record)
    console.print(f"wrote {args.out}")


def cell(result: dict[str, float], spread: bool = False) -> str:
    text = f"{result['precision']:.2f} / {result['recall']:.2f} / {result['f1']:.3f}"
    return f"{text} ±{result['f1_sd']:.3f}" if spread else text


def print_table(console: Console, record: dict[str, object]) -> None:
    columns = [f"{m} F1 held-out (in-sample)" for m in METHODS]
    title = "agreement with GPT-4's hit decisions (marg-alignments-dev; ± = spread over fold shuffles)"
    table = Table(
        "frame", "hit decisions by", "held-out P / R / F1", "in-sample P / R / F1", *columns, title=title
    )
    for frame in FRAMES:
        r = record[frame]
        for name, key in (
            ("MiniLM cosine (baseline)", "baseline"),
            ("static cosine alone", "static_cosine"),
            ("default matcher", "matcher"),
        ):
            held, fit = r[key]["heldout"], r[key]["insample"]
            per = [f"{held[m]['f1']:.3f} ({fit[m]['f1']:.3f})" for m in METHODS]
            table.add_row(frame, name, cell(held["all"], spread=True), cell(fit["all"]), *per)
        per = [f"- ({r['shipped'][m]['f1']:.3f})" for m in METHODS]
        table.add_row(frame, "shipped constants, match_many", "-", cell(r["shipped"]["all"]), *per)
    console.print(table)
    t = record["throughput"]
    m = t["matcher"]
    speed = Table(
        "measure",
        "value",
        title=f"throughput ({record['machine']['cpus']} CPUs, load {m['load_average_1m']})",
    )
    speed.add_row(
        "workload",
        f"{m['texts']:,} texts, {m['matcher_pairs']:,} matcher pairs, {m['scored_pairs']:,} scored pairs",
    )
    speed.add_row("encode (static)", f"{m['encode_s']} s = {m['texts_per_s']:,} texts/s")
    speed.add_row(
        "match_many (encode + score + assign)", f"{m['match_many_s']} s wall, {m['match_many_cpu_s']} s CPU"
    )
    speed.add_row("scoring", f"{m['pairs_per_s']:,} pairs/s")
    speed.add_row("matcher load", f"{t['matcher_load_s']} s")
    speed.add_row("MiniLM encode (baseline, 256 tokens)", f"{t['minilm_texts_per_s']} texts/s")
    console.print(speed)


if __name__ == "__main__":
    main()
