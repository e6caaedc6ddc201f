"""The MARG alignment data (marg-alignments-dev) as matcher calls: the one reader of its format, shared by
the matcher's benchmark and the pair model's training script. numpy only, so that it also runs where the
review-stack packages are not installed (the GPU machine that trains the pair model).

A *unit* is one matcher call: a generation method's comments on one paper against some of that paper's
human comments. Frame `paper` puts all the paper's human comments in one unit, as the evaluation calls the
matcher; frame `review` makes one unit per human review, as MARG's alignments were made.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

METHODS = ("lizca", "marg_s", "sarg_b")  # GPT-4 reviewers: Liang et al.'s prompt, multi-agent, single-agent
FRAMES = ("paper", "review")


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

    def labels(self) -> np.ndarray:
        """(generated, reference) matrix of GPT-4's alignments."""
        out = np.zeros((len(self.generated), len(self.reference)), dtype=bool)
        for g, r in self.aligned:
            out[g, r] = True
        return out


def unpack(archive: Path, into: Path) -> Path:
    """The folder holding the method folders, unpacked from `marg-alignments-dev.tar.gz` into `into`."""
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return next(into.glob("*/lizca")).parent


def load_units(folder: Path, frame: str) -> list[Unit]:
    """The units of one frame, methods in `METHODS` order, papers in file order. MARG's `reference_id`
    counts within one human review (its README's "flattened" is not what the files hold): each alignment
    is placed by its review and its text."""
    units = []
    for method in METHODS:
        path = folder / method / "output" / "all_results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: is {folder} an unpacked marg-alignments-dev?")
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
                    raise ValueError(f"{path}: alignment {a['reference_id']} matches no human comment")
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


def paper_folds(units: list[Unit], folds: int, seed: int) -> list[int]:
    """Each unit's fold when papers (all methods of a paper together) are dealt into `folds` folds."""
    papers = sorted({u.paper for u in units})
    order = np.random.RandomState(seed).permutation(len(papers))
    fold_of = {papers[j]: k % folds for k, j in enumerate(order)}
    return [fold_of[u.paper] for u in units]
