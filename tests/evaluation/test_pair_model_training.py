"""The pair model's training script (bench/train_pair_model.py) on the real data it trains from: what it
reads of ArgKP and MARG, and one tiny fine-tune on the CPU, so the recipe that made the shipped weights
keeps running between the GPU runs that use it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def recipe() -> Iterator[ModuleType]:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import train_pair_model

        yield train_pair_model
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_argkp_splits_are_read_as_published(recipe, shared_archive: Callable[[str], Path]) -> None:
    folder = shared_archive("argkp2021")
    counts = {}
    for split in ("train", "dev", "test"):
        pairs, labels = recipe.load_argkp(folder, split)
        assert len(pairs) == len(labels) and all(a and b for a, b in pairs)
        counts[split] = (len(pairs), int(labels.sum()))
    # PROVENANCE.md: train 20,635 (4,260 positive), dev 3,458 (738), test 3,426 (552)
    assert counts == {"train": (20635, 4260), "dev": (3458, 738), "test": (3426, 552)}


def test_marg_pairs_carry_gpt4s_alignments(recipe, shared_archive: Callable[[str], Path]) -> None:
    from marg import load_units

    units = load_units(shared_archive("marg-alignments-dev"), "paper")
    pairs, labels = recipe.marg_pairs(units)
    assert len(pairs) == sum(len(u.generated) * len(u.reference) for u in units)
    assert int(labels.sum()) == sum(len(u.aligned) for u in units) == 164


def test_a_tiny_fine_tune_learns_and_scores_both_orders_alike(
    recipe, shared_archive: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One epoch of a one-layer model on two papers: the loss is finite, every pair gets a score, and
    canonical order makes (a, b) and (b, a) one pair."""
    from marg import load_units

    from reviewstack.common.embeddings import packaged_model_path

    units = load_units(shared_archive("marg-alignments-dev"), "paper")[:2]
    monkeypatch.setitem(recipe.FINETUNE, "epochs", 1)
    monkeypatch.setitem(recipe.FINETUNE, "negatives_per_positive", 2)
    model = recipe.PairModel(packaged_model_path(), layers=1, device="cpu")
    losses = recipe.finetune(model, units, seed=0)
    assert len(losses) == 1 and np.isfinite(losses[0]) and losses[0] > 0
    pairs = [recipe.canonical(g, r) for g, r in recipe.marg_pairs(units)[0][:16]]
    scores = model.score(pairs)
    assert scores.shape == (16,) and np.isfinite(scores).all()
    a, b = pairs[0]
    assert recipe.canonical(b, a) == recipe.canonical(a, b)


def test_cross_paper_negatives_never_pair_two_points_of_one_paper(
    recipe, shared_archive: Callable[[str], Path]
) -> None:
    """Their whole claim to be negatives is that the two points are about different papers."""
    from marg import load_units

    units = load_units(shared_archive("marg-alignments-dev"), "paper")
    llm = {"paper-a": [["The paper is well-written.", "More baselines are needed."]], "paper-b": [["Clear."]]}
    texts = sorted(
        {t for u in units for t in (*u.generated, *u.reference)}
        | {"The paper is well-written.", "More baselines are needed.", "Clear."}
    )
    rng = np.random.RandomState(0)
    raw = rng.randn(len(texts), 8).astype(np.float32)
    vectors = dict(zip(texts, raw / np.linalg.norm(raw, axis=1, keepdims=True), strict=True))
    cross = recipe.CrossPaperNegatives(vectors, units[:3], units, llm, "cpu")
    paper_of: dict[str, set[str]] = {}
    for u in units:
        for t in (*u.generated, *u.reference):
            paper_of.setdefault(t, set()).add(u.paper)
    for paper, reviews in llm.items():
        for t in reviews[0]:
            paper_of.setdefault(t, set()).add(paper)
    pairs = cross.draw(rng, 200)
    assert len(pairs) == 200
    assert all(not (paper_of[a] & paper_of[b]) for a, b in pairs)
    marg_queries = {t for u in units[:3] for t in u.generated}
    assert sum(a in marg_queries for a, _ in pairs) == 100  # half from MARG, half from the LLM points


def test_a_student_keeps_the_chosen_layers_and_learns_the_teachers_logits(recipe) -> None:
    """Distillation: the student has N of the teacher's layers (the last one among them), reads at most
    its own token budget, and learns the teacher's logits with a finite loss."""
    from reviewstack.common.embeddings import packaged_model_path

    teacher = recipe.PairModel(packaged_model_path(), layers=2, device="cpu")
    pairs = [(f"point {i} about the method", f"point {i % 5} about the data") for i in range(48)]
    student, losses = recipe.distil(teacher, 1, 16, pairs, teacher.score(pairs), seed=0)
    assert student.model.config.num_hidden_layers == len(student.model.bert.encoder.layer) == 1
    assert recipe.spread_layers(6, 2) == [2, 5] and recipe.spread_layers(6, 3) == [1, 3, 5]
    assert recipe.spread_layers(2, 1) == [1] and recipe.spread_layers(6, 6) == list(range(6))
    assert student.max_length == 16 and teacher.max_length == recipe.MAX_LENGTH
    assert student.batch(pairs[:1])["input_ids"].shape[1] <= 16
    assert len(losses) == recipe.DISTIL["epochs"] and all(np.isfinite(losses))


def test_the_distillation_set_has_a_high_end(recipe, shared_archive: Callable[[str], Path]) -> None:
    """A student learns only the range its pairs cover: GPT-4's aligned pairs are repeated, a point meets
    itself, half the ArgKP pairs are positive, and every pair comes in both orders."""
    from marg import load_units

    units = load_units(shared_archive("marg-alignments-dev"), "paper")[:3]
    argkp = ([(f"argument {i}", f"key point {i}") for i in range(40)], np.array([1.0] * 10 + [0.0] * 30))
    llm_near = [("LLM point a", "LLM point b"), ("LLM point c", "LLM point d")]
    pairs = recipe.distillation_pairs(units, None, argkp, llm_near, seed=0)
    everything, labels = recipe.marg_pairs(units)
    aligned = [everything[i] for i in np.flatnonzero(labels > 0)]
    assert aligned and all(pairs.count(p) == recipe.DISTIL["positive_repeats"] for p in aligned)
    assert sum(a == b for a, b in pairs) == 2 * min(
        recipe.DISTIL["self_pairs"], len({t for u in units for t in (*u.generated, *u.reference)}) + 4
    )
    argkp_positive = {argkp[0][i] for i in range(10)}
    assert sum(p in argkp_positive for p in pairs) == 10  # every positive (fewer than asked), one order
    assert set(llm_near) <= set(pairs)
    assert sorted(pairs) == sorted((b, a) for a, b in pairs)


def test_near_llm_pairs_are_each_others_nearest_within_one_paper(recipe) -> None:
    vectors = {
        "a1": np.array([1.0, 0.0]),
        "a2": np.array([0.0, 1.0]),
        "b1": np.array([0.9, 0.1]),
        "c1": np.array([1.0, 0.0]),
    }
    llm = {"p": [["a1", "a2"], ["b1"]], "q": [["c1"]]}  # q has one review: nothing to pair
    assert recipe.near_llm_pairs(llm, vectors) == [("a1", "b1"), ("a2", "b1")]
    cosine = np.array([[0.9, 0.1, 0.0, 0.0], [0.0, 0.2, 0.8, 0.1]])
    assert recipe.nearest_mask(cosine, 1).tolist() == [
        [True, False, False, False],
        [False, True, True, True],
    ]
