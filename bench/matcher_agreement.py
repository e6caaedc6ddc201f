"""Benchmark: how often a point matcher's hit decisions agree with GPT-4's on generators it was not fitted
on, and how fast the default matcher is.

    .venv/bin/python bench/matcher_agreement.py [--scores DIR] [--also NAME=DIR ...] [--candidates K]
        [--write-calibration] [--archive ../shared/data/marg-alignments-dev.tar.gz]

Data: MARG's alignment evaluation (30 ICLR papers; the comments of three GPT-4 reviewer pipelines, lizca /
marg_s / sarg_b; comments extracted from the human reviews; GPT-4's `same_meaning` alignments). A human
comment is *hit* when some generated comment of that method is aligned to it; a matcher hits it when its
one-to-one matching of the method's comments against all the paper's human comments (the evaluation's
frame) keeps a pair with it. Precision / recall / F1 are over the hit decisions, GPT-4's being the truth.

Protocols, each fitting everything it tunes (thresholds, combiners, the pair model's weights) on its
fitting part alone:
- **leave-one-method-out** (headline): fit on two methods, measure on the third; three rotations, their
  mean and spread. It asks what an evaluation of a new generator needs: agreement on a generator whose
  style the matcher never saw. A rotation tunes the pair model's threshold on the scores each fitting
  method got from the model fine-tuned on the other fitting method, never on scores of data a model
  was trained on.
- cross-validation by paper (5 folds of papers, every method in every fold), beside it;
- in-sample (fit and measure on everything), beside it.

Systems: plain all-MiniLM-L6-v2 cosine (a human comment is hit when its best generated comment reaches a
threshold; the baseline), the distilled static cosine (the candidate stage alone), the default matcher
`embedded` (both logistic stages refitted on each protocol's fitting part, `embedded_scores`), the pair
model before any review data (ArgKP only, where the run has it), and the pair matcher (static candidates
→ pair model → one-to-one assignment → threshold). The pair models' scores of every MARG pair come from
bench/train_pair_model.py (`--scores`, its output folder; GPU); those of the shipped model's training run
are kept in bench/results/pair_model_distilled/student-64 (the 6-layer model shipped before it:
bench/results/pair_model_training), so the rest runs here, on a CPU. A protocol a run has no models for
(a student run has no cross-validation folds) is left out for it.

Every protocol's mean F1 comes with its 95 % interval over 2,000 paper-bootstrap resamples, and every
system's leave-one-method-out F1 with the interval of its difference from the baseline (the same
resamples for all): 30 papers are few, and the intervals say how few.

`--write-calibration` ships the threshold tuned on every method's leave-one-method-out scores (each
scored by the model that never saw it), with the measured agreement, as the pair matcher's calibration,
and the default's measured agreement into its calibration (its fitted stages stay as they are).
Its speed on an evaluation's workload is bench/eval_throughput.py's. Writes
bench/results/matcher_agreement.json and prints tables.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import ROOT, commit
from marg import METHODS, Unit, load_units, paper_folds, unpack
from rich.console import Console
from rich.table import Table
from scipy.special import expit

from reviewstack.common.embeddings import load_embedding_model
from reviewstack.evaluation import matching, matching_pair
from reviewstack.evaluation.matching import FEATURES, EmbeddedMatcher, Logistic, assigned_pairs, pair_features
from reviewstack.evaluation.matching import Calibration as EmbeddedCalibration
from reviewstack.evaluation.matching_pair import (
    CandidatePolicy,
    MatcherCalibration,
    PairMatcher,
    assign,
    candidates,
)

FOLDS = 5
FOLD_SEED = 0  # the folds bench/train_pair_model.py trained its cross-validation models on
CALIBRATION_FILE = ROOT / "eval-service" / "reviewstack" / "evaluation" / matching_pair.CALIBRATION
EMBEDDED_CALIBRATION_FILE = ROOT / "eval-service" / "reviewstack" / "evaluation" / matching.CALIBRATION
EMBEDDED = "embedded (the default), refitted per model"


BASELINE = "MiniLM cosine (baseline)"
HEADLINE = "pair matcher: fine-tuned pair model"


# -- protocols -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """One fit / measure split. `model` names the pair model that scores the measured units; `tuning`
    names, per fitted unit, the pair model whose scores of it may be used to tune (one that never
    trained on it, where the protocol allows)."""

    name: str
    fit: list[int]
    test: list[int]
    model: str
    tuning: dict[int, str]


def protocols(units: list[Unit]) -> dict[str, list[Split]]:
    rows = range(len(units))
    lomo = []
    for held in METHODS:
        a, b = (m for m in METHODS if m != held)
        fit = [i for i in rows if units[i].method != held]
        tuning = {i: b if units[i].method == a else a for i in fit}
        lomo.append(Split(held, fit, [i for i in rows if units[i].method == held], f"{a}+{b}", tuning))
    fold = paper_folds(units, FOLDS, FOLD_SEED)
    cv = [
        Split(
            f"fold{k}",
            [i for i in rows if fold[i] != k],
            [i for i in rows if fold[i] == k],
            f"fold{k}",
            {i: f"fold{fold[i]}" for i in rows if fold[i] != k},
        )
        for k in range(FOLDS)
    ]
    everything = list(rows)
    insample = [Split("all", everything, everything, "all", dict.fromkeys(everything, "all"))]
    return {"leave-one-method-out": lomo, "cross-validation by paper": cv, "in-sample": insample}


def covers(splits: list[Split], models: set[str] | None) -> bool:
    """Whether a training run has every model a protocol reads (None: the system trains nothing)."""
    needed = {s.model for s in splits} | {m for s in splits for m in s.tuning.values()}
    return models is None or needed <= models


def prf(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    tp = int((truth & predicted).sum())
    precision = tp / max(int(predicted.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {"precision": round(precision, 3), "recall": round(recall, 3), "f1": round(f1, 3)}


def best_threshold(truth: np.ndarray, scores: np.ndarray) -> float:
    """The threshold maximising F1 of `scores >= threshold` (scores of -inf: never a hit)."""
    finite = scores[np.isfinite(scores)]
    grid = np.unique(np.quantile(finite, np.linspace(0.0, 0.999, 400)))
    return float(max(grid, key=lambda t: prf(truth, scores >= t)["f1"]))


# -- systems: each turns (unit, score table) into one score per human comment, thresholded ---------------
CommentScores = Callable[[int, str], np.ndarray]  # (unit row, pair model name) → a score per human comment


def decide(
    units: list[Unit], splits: list[Split], score: CommentScores
) -> list[tuple[str, float, list[int], np.ndarray]]:
    """Per split: its name, the threshold tuned on its fitting units, its measured units, and whether
    each of their human comments is decided hit."""
    out = []
    for split in splits:
        fit_truth = np.concatenate([units[i].hits for i in split.fit])
        fit_scores = np.concatenate([score(i, split.tuning[i]) for i in split.fit])
        threshold = best_threshold(fit_truth, fit_scores)
        decided = [score(i, split.model) >= threshold for i in split.test]
        out.append((split.name, threshold, split.test, decided))
    return out


def run_protocol(units: list[Unit], splits: list[Split], score: CommentScores) -> dict[str, object]:
    """Tune the threshold on each split's fitting units, decide its measured units; P / R / F1 per split
    and pooled over splits, and the 95 % interval of the mean F1 over papers (`paper_bootstrap`)."""
    per_split, truth_all, decided_all, thresholds = {}, [], [], {}
    decisions = decide(units, splits, score)
    for name, threshold, test, decided in decisions:
        truth = np.concatenate([units[i].hits for i in test])
        per_split[name] = prf(truth, np.concatenate(decided))
        thresholds[name] = round(threshold, 4)
        truth_all.append(truth)
        decided_all.append(np.concatenate(decided))
    f1s = [r["f1"] for r in per_split.values()]
    low, high = np.percentile(paper_bootstrap(units, decisions), [2.5, 97.5])
    return {
        "splits": per_split,
        "pooled": prf(np.concatenate(truth_all), np.concatenate(decided_all)),
        "mean_f1": round(float(np.mean(f1s)), 3),
        "f1_spread": [round(min(f1s), 3), round(max(f1s), 3)],
        "mean_f1_interval": [round(float(low), 3), round(float(high), 3)],
        "thresholds": thresholds,
    }


def difference_interval(
    units: list[Unit], splits: list[Split], score: CommentScores, baseline: CommentScores
) -> list[float]:
    """The 95 % paper-bootstrap interval of (mean F1 of `score`) - (mean F1 of `baseline`)."""
    difference = paper_bootstrap(units, decide(units, splits, score)) - paper_bootstrap(
        units, decide(units, splits, baseline)
    )
    return [round(float(x), 3) for x in np.percentile(difference, [2.5, 97.5])]


BOOTSTRAP = {"resamples": 2000, "seed": 0}


def paper_bootstrap(
    units: list[Unit], decisions: list[tuple[str, float, list[int], np.ndarray]]
) -> np.ndarray:
    """The mean F1 over splits when the 30 papers are drawn again with replacement, once per resample:
    how much of a difference between matchers the papers can tell apart. Every system draws the same
    resamples (fixed seed), so two systems' arrays subtract into the interval of their difference."""
    papers = sorted({u.paper for u in units})
    column = {paper: j for j, paper in enumerate(papers)}
    rng = np.random.RandomState(BOOTSTRAP["seed"])
    weights = np.stack(
        [
            np.bincount(rng.randint(len(papers), size=len(papers)), minlength=len(papers))
            for _ in range(BOOTSTRAP["resamples"])
        ]
    )
    f1s = []
    for _, _, test, decided in decisions:
        counts = np.zeros((len(papers), 3))  # per paper: true positives, decided hits, GPT-4 hits
        for i, hit in zip(test, decided, strict=True):
            truth = units[i].hits
            counts[column[units[i].paper]] += [(truth & hit).sum(), hit.sum(), truth.sum()]
        tp, decided_hits, true_hits = (weights @ counts).T
        f1s.append(np.where(tp > 0, 2 * tp / np.maximum(decided_hits + true_hits, 1), 0.0))
    return np.mean(f1s, axis=0)


class PairScores:
    """The pair models' logits of every (generated, human) pair of every unit, from train_pair_model.py."""

    def __init__(self, folder: Path, units: list[Unit]) -> None:
        data = np.load(folder / "pair_scores.npz")
        shapes = [(len(u.generated), len(u.reference)) for u in units]
        if [tuple(s) for s in data["shapes"]] != shapes:
            raise SystemExit(f"{folder}/pair_scores.npz was made from other MARG units than these")
        offsets = np.cumsum([0] + [g * r for g, r in shapes])
        self.models = {
            name: [data[name][offsets[i] : offsets[i + 1]].reshape(shapes[i]) for i in range(len(units))]
            for name in data.files
            if name != "shapes"
        }
        self.card = json.loads((folder / "train_pair_model.json").read_text())


def matcher_scores(
    cosines: list[np.ndarray],
    pair_scores: PairScores,
    policy: CandidatePolicy,
    fixed_model: str | None = None,
) -> CommentScores:
    """The default matcher's decision path: candidates from the static cosine, the pair model's
    probabilities on them, the one-to-one assignment; a human comment's score is its assigned pair's
    probability (-inf when unassigned)."""
    cache: dict[tuple[int, str], np.ndarray] = {}

    def score(row: int, model: str) -> np.ndarray:
        model = fixed_model or model
        if (row, model) not in cache:
            allowed = candidates(cosines[row], policy)
            probability = expit(pair_scores.models[model][row].astype(np.float64))
            _, cols, values = assign(probability, allowed)
            out = np.full(cosines[row].shape[1], -np.inf)
            out[cols] = values
            cache[(row, model)] = out
        return cache[(row, model)]

    return score


def embedded_scores(units: list[Unit], matcher: EmbeddedMatcher) -> CommentScores:
    """The default matcher refitted on each model's training subset (a method, two methods, a fold of
    papers, all), as its shipped calibration was fitted on all of MARG: a logistic pair stage on GPT-4's
    aligned pairs (balanced classes), the assignment on its logits, a logistic hit stage on the assigned
    pairs labelled by GPT-4's hits. A human comment's score is its assigned pair's hit probability; the
    protocol tunes the threshold as it does for the pair model's, from the other fitting method's fit."""
    from sklearn.linear_model import LogisticRegression

    texts = sorted({t for u in units for t in (*u.generated, *u.reference)})
    index = {t: i for i, t in enumerate(texts)}
    encoded = matcher.encoder.encode(texts)
    features = [
        pair_features(
            encoded.take([index[t] for t in u.generated]), encoded.take([index[t] for t in u.reference])
        )
        for u in units
    ]
    fold = paper_folds(units, FOLDS, FOLD_SEED)

    def logistic(x: np.ndarray, y: np.ndarray, balanced: bool) -> Logistic:
        mean, scale = x.mean(0), x.std(0) + 1e-9
        fitted = LogisticRegression(C=1.0, class_weight="balanced" if balanced else None, max_iter=5000)
        fitted.fit((x - mean) / scale, y)
        return Logistic(mean, scale, fitted.coef_[0], float(fitted.intercept_[0]))

    @functools.cache
    def fitted(model: str) -> EmbeddedCalibration:
        if model.startswith("fold"):
            rows = [i for i in range(len(units)) if fold[i] != int(model[4:])]
        else:
            methods = set(METHODS) if model == "all" else set(model.split("+"))
            rows = [i for i, u in enumerate(units) if u.method in methods]
        x = np.concatenate([features[i].reshape(-1, len(FEATURES)) for i in rows])
        pair = logistic(x, np.concatenate([units[i].labels().ravel() for i in rows]), balanced=True)
        assigned = [assigned_pairs(features[i], pair) for i in rows]
        chosen = np.concatenate([z for _, _, z in assigned])
        hit = np.concatenate([units[i].hits[cols] for i, (_, cols, _) in zip(rows, assigned, strict=True)])
        return EmbeddedCalibration(pair, logistic(chosen, hit, balanced=False), threshold=0.0)

    def score(row: int, model: str) -> np.ndarray:
        _, cols, probability = fitted(model).hit_probabilities(features[row])
        out = np.full(len(units[row].reference), -np.inf)
        out[cols] = probability
        return out

    return score


def best_cosine_scores(cosines: list[np.ndarray]) -> CommentScores:
    """A human comment's best cosine over the method's comments (not one-to-one: the plain baseline)."""
    return lambda row, _model: cosines[row].max(axis=0)


def cosine_matrices(units: list[Unit], encode: Callable[[list[str]], np.ndarray]) -> list[np.ndarray]:
    texts = sorted({t for u in units for t in (*u.generated, *u.reference)})
    index = {t: i for i, t in enumerate(texts)}
    vectors = encode(texts)
    return [
        vectors[[index[t] for t in u.generated]] @ vectors[[index[t] for t in u.reference]].T for u in units
    ]


def candidate_recall(
    units: list[Unit], cosines: list[np.ndarray], policy: CandidatePolicy
) -> dict[str, float]:
    kept = total = pairs = 0
    for unit, cos in zip(units, cosines, strict=True):
        allowed = candidates(cos, policy)
        kept += int(allowed[unit.labels()].sum())
        total += len(unit.aligned)
        pairs += int(allowed.sum())
    return {
        "gpt4_pairs_kept": round(kept / total, 3),
        "pairs_scored": round(pairs / sum(c.size for c in cosines), 3),
    }


# -- the shipped matchers, end to end -------------------------------------------------------------------
# A review that says nothing about any paper. A matcher fit for judging reviews gives it fewer hits per
# point than a GPT-4 reviewer's comments get from GPT-4: it is the control GPT-4's comments cannot be.
GENERIC_REVIEW = (
    "The paper is well-written and easy to follow.",
    "The proposed method is novel and interesting.",
    "The experiments are well-designed and the results are convincing.",
    "The paper lacks sufficient detail about the methodology.",
    "The experimental evaluation is limited and should include more baselines.",
    "The authors should discuss the limitations of their approach.",
    "The theoretical analysis is not rigorous enough.",
    "The code should be released for reproducibility.",
)


def shipped(units: list[Unit], matcher: object) -> dict[str, dict[str, float]]:
    """A matcher as shipped (its constants were fitted on all of MARG: in-sample), through `match_many`;
    and the generic-review control: the canned review against every paper's human comments."""
    out = {}
    for method in (*METHODS, None):
        chosen = [u for u in units if method in (None, u.method)]
        out[method or "all"] = prf(*hit_decisions(chosen, matcher))
    out["wrong_paper"] = wrong_paper_control(units, matcher)
    precision, gpt4 = generic_control(units, matcher)
    out["generic_review"] = {
        "hits_per_paper": round(precision * len(GENERIC_REVIEW), 2),
        "precision": round(precision, 3),
        "gpt4_precision_of_gpt4_comments": round(gpt4, 3),
    }
    return out


TRADEOFF_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def threshold_tradeoff(
    units: list[Unit], score: CommentScores, matcher: PairMatcher, thresholds: Sequence[float]
) -> list[dict[str, object]]:
    """The pair matcher at fixed thresholds above its F1-best one: leave-one-method-out F1 beside the
    generic-review control's precision, i.e. what refusing generic text costs in agreement with GPT-4.
    A fixed threshold is tuned on nothing, so every rotation is measured the same way."""
    lomo = protocols(units)["leave-one-method-out"]
    papers = {u.paper: u.reference for u in units}
    permissive = PairMatcher(
        calibration=replace(matcher.calibration, threshold=0.0), pair_model=matcher.pair_model
    )
    generic = permissive.match_many([(list(GENERIC_REVIEW), reference) for reference in papers.values()])
    probability = np.array([m.score for matches in generic for m in matches])
    rows = []
    for threshold in thresholds:
        f1s = {
            s.name: prf(
                np.concatenate([units[i].hits for i in s.test]),
                np.concatenate([score(i, s.model) for i in s.test]) >= threshold,
            )["f1"]
            for s in lomo
        }
        rows.append(
            {
                "threshold": threshold,
                "lomo_mean_f1": round(float(np.mean(list(f1s.values()))), 3),
                "rotations": f1s,
                "generic_precision": round(
                    float((probability >= threshold).sum()) / (len(GENERIC_REVIEW) * len(papers)), 3
                ),
            }
        )
    return rows


def hit_decisions(units: list[Unit], matcher: object) -> tuple[np.ndarray, np.ndarray]:
    """GPT-4's hit decisions over the units' human comments, and the matcher's through `match_many`."""
    results = matcher.match_many([(u.generated, u.reference) for u in units])
    decided = []
    for unit, matches in zip(units, results, strict=True):
        hit = np.zeros(len(unit.reference), dtype=bool)
        hit[[m.reference for m in matches]] = True
        decided.append(hit)
    return np.concatenate([u.hits for u in units]), np.concatenate(decided)


def wrong_paper_control(units: list[Unit], matcher: object) -> dict[str, dict[str, float]]:
    """Per method, the share of its comments the matcher hits on their own paper, and on the *next*
    paper's human comments, where every hit is wrong. A matcher that reads what a comment says about
    its paper hits far fewer there; one that matches the kind of critique hits nearly as many. GPT-4's
    share on the right paper stands beside (it judged no wrong-paper pairs)."""
    out = {}
    for method in METHODS:
        own = [u for u in units if u.method == method]
        other = [(own[(i + 1) % len(own)].generated, own[i].reference) for i in range(len(own))]
        comments = sum(len(u.generated) for u in own)
        right = matcher.match_many([(u.generated, u.reference) for u in own])
        wrong = matcher.match_many(other)
        out[method] = {
            "right_paper": round(sum(len(m) for m in right) / comments, 3),
            "wrong_paper": round(sum(len(m) for m in wrong) / sum(len(g) for g, _ in other), 3),
            "gpt4_right_paper": round(sum(len({g for g, _ in u.aligned}) for u in own) / comments, 3),
        }
    return out


def generic_control(units: list[Unit], matcher: object) -> tuple[float, float]:
    """The share of the generic review's points the matcher hits over MARG's papers, and the share of
    the GPT-4 reviewers' comments that GPT-4 aligned to a human comment."""
    papers = {u.paper: u.reference for u in units}
    generic = matcher.match_many([(list(GENERIC_REVIEW), reference) for reference in papers.values()])
    precision = sum(len(m) for m in generic) / (len(GENERIC_REVIEW) * len(papers))
    gpt4 = sum(len({g for g, _ in u.aligned}) for u in units) / sum(len(u.generated) for u in units)
    return precision, gpt4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--archive", default=str(ROOT.parent / "shared" / "data" / "marg-alignments-dev.tar.gz")
    )
    parser.add_argument(
        "--scores",
        type=Path,
        default=ROOT / "bench" / "results" / "pair_model_distilled" / "student-64",
        help="bench/train_pair_model.py's --out folder (default: the shipped model's training run)",
    )
    parser.add_argument(
        "--also",
        nargs="*",
        default=[],
        metavar="NAME=DIR",
        help="more train_pair_model.py runs to score beside it (another recipe, the teacher)",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        metavar="K",
        help="candidates: each point's K nearest on the other side (default: the shipped calibration's)",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "matcher_agreement.json"))
    parser.add_argument("--write-calibration", action="store_true", help=f"ship {CALIBRATION_FILE.name}")
    args = parser.parse_args()
    console = Console() if sys.stdout.isatty() else Console(width=170)
    with tempfile.TemporaryDirectory() as tmp:
        units = load_units(unpack(Path(args.archive), Path(tmp)), "paper")
    pair_scores = PairScores(args.scores, units)
    console.print("[bold]encoding[/]: all-MiniLM-L6-v2 (baseline) and the static distillation (candidates)")
    minilm = load_embedding_model(max_seq_length=256)
    minilm_cos = cosine_matrices(units, lambda t: minilm.encode(t, batch_size=64, normalize_embeddings=True))
    encoder = EmbeddedMatcher().encoder
    static_cos = cosine_matrices(units, lambda texts: encoder.encode(texts).vectors)
    policy = (
        CandidatePolicy(args.candidates)
        if args.candidates is not None
        else MatcherCalibration.load().candidates
    )
    systems: dict[str, CommentScores] = {
        BASELINE: best_cosine_scores(minilm_cos),
        "static cosine": best_cosine_scores(static_cos),
        EMBEDDED: embedded_scores(units, EmbeddedMatcher()),
        HEADLINE: matcher_scores(static_cos, pair_scores, policy),
        "pair model, every pair a candidate": matcher_scores(
            static_cos, pair_scores, CandidatePolicy(per_point=0)
        ),
    }
    trained = {
        HEADLINE: set(pair_scores.models),
        "pair model, every pair a candidate": set(pair_scores.models),
    }
    if "argkp" in pair_scores.models:
        systems["pair model, ArgKP only"] = matcher_scores(
            static_cos, pair_scores, policy, fixed_model="argkp"
        )
    for also in args.also:
        name, _, folder = also.partition("=")
        scores = PairScores(Path(folder), units)
        systems[f"pair matcher: {name}"] = matcher_scores(static_cos, scores, policy)
        trained[f"pair matcher: {name}"] = set(scores.models)
    splits = protocols(units)
    record: dict[str, object] = {
        "benchmark": "matcher_agreement",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": {"cpus": os.cpu_count()},
        "data": {
            "units": len(units),
            "human_comments": sum(len(u.reference) for u in units),
            "gpt4_hits": int(sum(u.hits.sum() for u in units)),
            "gpt4_pairs": sum(len(u.aligned) for u in units),
        },
        "pair_model_training": pair_scores.card,
        "candidates": {"policy": policy.to_dict(), **candidate_recall(units, static_cos, policy)},
        "systems": {
            name: {
                protocol: run_protocol(units, s, score)
                for protocol, s in splits.items()
                if covers(s, trained.get(name))
            }
            for name, score in systems.items()
        },
        "bootstrap": BOOTSTRAP,
    }
    lomo = splits["leave-one-method-out"]
    for name, score in systems.items():
        if name != BASELINE:
            record["systems"][name]["leave-one-method-out"]["minus_baseline_interval"] = difference_interval(
                units, lomo, score, systems[BASELINE]
            )
    if args.write_calibration:
        write_calibration(units, systems[HEADLINE], splits, record, policy)
        console.print(f"wrote {CALIBRATION_FILE.relative_to(ROOT)}")
    record["shipped"] = {"pair": shipped(units, PairMatcher()), "embedded": shipped(units, EmbeddedMatcher())}
    pair = PairMatcher()
    record["threshold_tradeoff"] = threshold_tradeoff(
        units,
        systems[HEADLINE],
        pair,
        (pair.calibration.threshold, *TRADEOFF_THRESHOLDS),
    )
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print_tables(console, record)
    console.print(f"wrote {args.out}")


def write_calibration(
    units: list[Unit],
    score: CommentScores,
    splits: dict[str, list[Split]],
    record: dict,
    policy: CandidatePolicy,
) -> None:
    """The shipped threshold: tuned on every unit's leave-one-method-out score (from the model that never
    saw its method), the scale the shipped model's scores have on a generator it has not seen."""
    lomo = splits["leave-one-method-out"]
    truth = np.concatenate([units[i].hits for s in lomo for i in s.test])
    scores = np.concatenate([score(i, s.model) for s in lomo for i in s.test])
    calibration = MatcherCalibration(
        candidates=policy,
        threshold=round(best_threshold(truth, scores), 4),
        pair_model=PairMatcher().pair_model.digest,
        agreement=agreement(record, HEADLINE),
        fitted_by=f"bench/matcher_agreement.py --write-calibration ({record['commit']}, "
        f"{record['date'][:10]})",
    )
    calibration.write(CALIBRATION_FILE)
    # the default's agreement, measured by the same protocol; its fitted stages stay as they were fitted
    shipped_default = json.loads(EMBEDDED_CALIBRATION_FILE.read_text())
    shipped_default["agreement"] = agreement(record, EMBEDDED) | {
        "protocol": "leave-one-method-out: both stages refitted on two reviewers, the threshold tuned on "
        "each one's scores from the other's fit, measured on the third",
        "measured": calibration.fitted_by,
    }
    EMBEDDED_CALIBRATION_FILE.write_text(json.dumps(shipped_default, indent=2) + "\n")


def agreement(record: dict, system: str) -> dict[str, Any]:
    """What a report quotes of a system's agreement with GPT-4, from this run's record."""
    result = record["systems"][system]
    lomo = result["leave-one-method-out"]
    return {
        "judge": "GPT-4 same_meaning alignments, marg-alignments-dev (30 ICLR papers, 3 GPT-4 reviewers)",
        "protocol": "leave-one-method-out: fitted on two reviewers, measured on the third",
        "f1": lomo["mean_f1"],
        "precision": lomo["pooled"]["precision"],
        "recall": lomo["pooled"]["recall"],
        "rotations": {k: v["f1"] for k, v in lomo["splits"].items()},
        "cosine_baseline_f1": record["systems"][BASELINE]["leave-one-method-out"]["mean_f1"],
        "interval": lomo["mean_f1_interval"],
        "in_sample_f1": result["in-sample"]["mean_f1"] if "in-sample" in result else None,
        "cross_validated_f1": result.get("cross-validation by paper", {}).get("pooled", {}).get("f1"),
    }


def print_tables(console: Console, record: dict) -> None:
    table = Table(
        "matcher",
        *(f"held out: {m}\nP / R / F1" for m in METHODS),
        "leave-one-method-out\nmean F1 [min, max]",
        "95 % over papers:\nmean F1 | − baseline",
        "CV by paper\nF1",
        "in-sample\nF1",
        title="agreement with GPT-4's hit decisions (marg-alignments-dev, paper frame)",
    )

    def pooled(result: dict, protocol: str) -> str:
        return f"{result[protocol]['pooled']['f1']:.3f}" if protocol in result else "-"

    for name, result in record["systems"].items():
        lomo = result["leave-one-method-out"]
        cells = [f"{s['precision']:.2f} / {s['recall']:.2f} / {s['f1']:.3f}" for s in lomo["splits"].values()]
        spread = f"{lomo['mean_f1']:.3f} [{lomo['f1_spread'][0]:.3f}, {lomo['f1_spread'][1]:.3f}]"
        interval = "[{:.3f}, {:.3f}]".format(*lomo["mean_f1_interval"])
        if "minus_baseline_interval" in lomo:
            interval += " | [{:+.3f}, {:+.3f}]".format(*lomo["minus_baseline_interval"])
        cv, fit = pooled(result, "cross-validation by paper"), pooled(result, "in-sample")
        table.add_row(name, *cells, spread, interval, cv, fit)
    for name, s in record["shipped"].items():
        table.add_row(
            f"shipped {name} matcher (in-sample)",
            *(f"{s[m]['precision']:.2f} / {s[m]['recall']:.2f} / {s[m]['f1']:.3f}" for m in METHODS),
            "-",
            "-",
            "-",
            f"{s['all']['f1']:.3f}",
        )
    console.print(table)
    for name, s in record["shipped"].items():
        g = s["generic_review"]
        console.print(
            f"generic-review control, {name}: {g['hits_per_paper']} hits per paper, precision "
            f"{g['precision']:.2f} (GPT-4 aligned "
            f"{g['gpt4_precision_of_gpt4_comments']:.2f} of its reviewers' comments)"
        )
    for name, s in record["shipped"].items():
        console.print(
            f"wrong-paper control, {name}: share of comments hit on their own paper / on the next paper's "
            "human comments (GPT-4, own paper): "
            + "; ".join(
                f"{m} {w['right_paper']:.2f} / {w['wrong_paper']:.2f} ({w['gpt4_right_paper']:.2f})"
                for m, w in s["wrong_paper"].items()
            )
        )
    tradeoff = Table(
        "threshold",
        "leave-one-method-out\nmean F1",
        *(f"held out: {m}" for m in METHODS),
        "generic review\nprecision",
        title="the shipped pair model at fixed thresholds: agreement against crediting generic text",
    )
    for row in record.get("threshold_tradeoff", []):
        tradeoff.add_row(
            f"{row['threshold']:g}",
            f"{row['lomo_mean_f1']:.3f}",
            *(f"{row['rotations'][m]:.3f}" for m in METHODS),
            f"{row['generic_precision']:.3f}",
        )
    console.print(tradeoff)
    c = record["candidates"]
    console.print(
        f"candidates: {c['policy']} keep {c['gpt4_pairs_kept']:.0%} of GPT-4's pairs, "
        f"{c['pairs_scored']:.0%} of all pairs read by the pair model"
    )


if __name__ == "__main__":
    main()
