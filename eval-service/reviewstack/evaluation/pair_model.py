"""The pair model: a cross-encoder that reads two review points together and gives the log-odds that they
make the same point, as GPT-4 judged it in the MARG alignments.

It is all-MiniLM-L6-v2 with a one-logit head, pre-trained on ArgKP-2021 and fine-tuned on the MARG
alignments, then distilled into 2 of its 6 layers reading the first 64 tokens of a pair, by
bench/train_pair_model.py; exported to ONNX and quantised to int8 by bench/export_pair_model.py, and
shipped in the package (`pair_model/`): no hub, no GPU, no torch at run time. Reading a pair costs
~2.9 ms on a CPU core (the 6-layer teacher: ~12 ms), so the matcher sends it only the candidate pairs
the static embeddings propose.

Each pair is read alone, one pair per call, on as many threads as there are cores. Batching would pad
less but not help: int8 dynamic quantisation scales activations over the whole batch, so a pair's score
would depend on its batch-mates (and a paper's result on which other papers were evaluated with it).
Alone, a pair always gets the same score, and single-threaded calls on every core are as fast.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from reviewstack.common.errors import FailedPrecondition

FOLDER = "pair_model"
MODEL = "model.onnx"
TOKENIZER = "tokenizer.json"
CARD = "pair_model.json"  # provenance: how the weights were trained, the numbers they reached


def canonical(a: str, b: str) -> tuple[str, str]:
    """The order a pair is read in. The model was trained on both orders; reading each unordered pair
    once lets the leave-one-out reuse a human pair it met from the other reviewer's side."""
    return (a, b) if a <= b else (b, a)


@dataclass(frozen=True)
class PairModelFiles:
    directory: Path

    @classmethod
    def packaged(cls) -> PairModelFiles:
        return cls(Path(str(files("reviewstack.evaluation").joinpath(FOLDER))))

    def card(self) -> dict[str, Any]:
        path = self.directory / CARD
        if not (
            path.is_file() and (self.directory / MODEL).is_file() and (self.directory / TOKENIZER).is_file()
        ):
            raise FailedPrecondition(
                f"the matcher's pair model is incomplete in {self.directory} (needs {MODEL}, {TOKENIZER} and "
                f"{CARD}): reinstall reviewstack-evaluation (`make install`), or rebuild it with "
                "bench/train_pair_model.py and bench/export_pair_model.py"
            )
        return json.loads(path.read_text())

    def digest(self) -> str:
        """Of the weights and the tokenizer: part of the matcher's version."""
        sha = hashlib.sha256()
        for name in (MODEL, TOKENIZER):
            sha.update((self.directory / name).read_bytes())
        return sha.hexdigest()[:8]


class PairModel:
    """The int8 ONNX cross-encoder and its tokenizer, on the CPU."""

    def __init__(self, model_files: PairModelFiles | None = None, threads: int | None = None) -> None:
        self.files = model_files or PairModelFiles.packaged()
        self.card = self.files.card()
        try:
            self.max_length = int(self.card["max_length"])
        except (KeyError, TypeError, ValueError):
            raise FailedPrecondition(
                f"{self.files.directory / CARD} has no valid max_length: re-export the pair model with "
                "bench/export_pair_model.py"
            ) from None
        self.threads = threads or min(len(os.sched_getaffinity(0)), 8)  # the cores this process may use

    @cached_property
    def digest(self) -> str:
        return self.files.digest()

    @cached_property
    def tokenizer(self) -> Any:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.files.directory / TOKENIZER))
        tokenizer.enable_truncation(self.max_length, strategy="longest_first")
        tokenizer.no_padding()  # a pair is read alone: nothing to pad
        return tokenizer

    @cached_property
    def session(self) -> Any:
        try:
            import onnxruntime as ort
        except ImportError:
            raise FailedPrecondition(
                "the matcher's pair model needs onnxruntime: reinstall reviewstack-evaluation with its "
                "dependencies (`make install`)"
            ) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the parallelism is over pairs (`logits`)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        path = str(self.files.directory / MODEL)
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def logits(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """The same-point log-odds of each (a, b), read in the order given."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(pairs))
        session, names = self.session, self._input_names

        def read(encoding: Any) -> float:
            inputs = {
                "input_ids": np.array([encoding.ids], dtype=np.int64),
                "attention_mask": np.ones((1, len(encoding.ids)), dtype=np.int64),
                "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
            }
            (logits,) = session.run(None, {name: inputs[name] for name in names})
            return float(logits.reshape(-1)[0])

        with ThreadPoolExecutor(self.threads) as pool:
            return np.fromiter(pool.map(read, encodings), dtype=np.float32, count=len(encodings))

    @cached_property
    def _input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.session.get_inputs())
