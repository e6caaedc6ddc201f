"""The pair matcher ("pair"): its parts (candidates, assignment, the pair model and its calibration) against
references, and its agreement with GPT-4 on the real MARG alignment data. The contract every matcher
keeps (one-to-one, empty inputs, batching) is tested for both in test_matching.py.

The static model it needs is distilled once per environment (half a minute to three minutes on two
cores, the first time any test here runs); after that every test is quick."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from reviewstack.common.errors import FailedPrecondition, InvalidArgument
from reviewstack.evaluation.matching_pair import (
    CandidatePolicy,
    MatcherCalibration,
    PairMatcher,
    assign,
    candidates,
    pair_matcher,
)
from reviewstack.evaluation.model import Match
from reviewstack.evaluation.pair_model import PairModel, PairModelFiles, canonical

from .test_matching import BASELINES, POINTS, hit_f1

ROOT = Path(__file__).resolve().parents[2]

# Hit-decision F1 against GPT-4 on marg-alignments-dev, paper frame (bench/matcher_agreement.py). The
# shipped pair model is a 2-layer, 64-token student of a 6-layer teacher (bench/results/
# pair_model_distilled): end to end it scores 0.53 in-sample (0.54 on lizca's reviews: its teacher was
# fine-tuned on these papers); leave-one-method-out 0.292, its teacher 0.304, the 6-layer model shipped
# before it 0.318 (same recipe, another run), the static cosine 0.239. The issue's target on unseen
# generators, 0.35, is not reached: `test_the_issues_target_agreement` records that, and fails loudly
# (XPASS) once it is.
SHIPPED_F1_FLOOR = 0.45
LOMO_F1 = 0.292
TARGET_LOMO_F1 = 0.35
RESULTS = ROOT / "bench" / "results"


@pytest.fixture(scope="module")
def matcher() -> PairMatcher:
    return pair_matcher()


def test_it_is_a_matcher_that_reports_its_version_and_agreement(matcher):
    assert matcher.name == "pair" and matcher.version.startswith("pair-")
    assert "minilm-l6-v2-static256" in matcher.version
    described = matcher.describe()
    assert (
        described["agreement"]["f1"] == LOMO_F1
        and "leave-one-method-out" in described["agreement"]["protocol"]
    )
    assert isinstance(matcher.match_many([(POINTS[:1], POINTS[:1])])[0][0], Match)
    with pytest.raises(InvalidArgument, match="points must be strings"):
        matcher.match_many([([1], POINTS)])  # type: ignore[list-item]


def test_candidates_are_each_points_nearest_on_both_sides():
    cosine = np.array([[0.9, 0.1, 0.5, 0.2], [0.3, 0.8, 0.4, 0.1], [0.2, 0.2, 0.1, 0.7]])
    one = candidates(cosine, CandidatePolicy(1))
    # row bests (0,0) (1,1) (2,3) and column bests (0,0) (1,1) (0,2) (2,3)
    assert sorted((int(g), int(r)) for g, r in zip(*np.nonzero(one), strict=True)) == [
        (0, 0),
        (0, 2),
        (1, 1),
        (2, 3),
    ]
    two = candidates(cosine, CandidatePolicy(2))
    assert two.sum(axis=1).min() >= 2 and two.sum(axis=0).min() >= 2 and (two | one).sum() == two.sum()
    assert candidates(cosine, CandidatePolicy(0)).all() and candidates(cosine, CandidatePolicy(5)).all()


def test_assignment_is_the_best_one_to_one_choice_of_candidates():
    """Against brute force over every one-to-one assignment, on random matrices and masks."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        n_g, n_r = (int(n) for n in rng.integers(1, 5, size=2))
        probability = rng.random((n_g, n_r))
        allowed = rng.random((n_g, n_r)) < 0.6
        rows, cols, values = assign(probability, allowed)
        assert len(set(rows)) == len(rows) and len(set(cols)) == len(cols)
        assert allowed[rows, cols].all() and np.allclose(values, probability[rows, cols])
        best = 0.0
        small, large = sorted((n_g, n_r))
        for chosen in itertools.permutations(range(large), small):
            pairs = (
                zip(range(small), chosen, strict=True)
                if n_g <= n_r
                else zip(chosen, range(small), strict=True)
            )
            best = max(best, sum(probability[g, r] for g, r in pairs if allowed[g, r]))
        assert values.sum() == pytest.approx(best)


def test_the_pair_model_reads_pairs_as_the_trainer_tokenised_them():
    """The shipped tokenizer through `tokenizers` gives the ids transformers gave the trainer (the
    packaged MiniLM's tokenizer), with the same truncation of long pairs."""
    from transformers import AutoTokenizer

    from reviewstack.common.embeddings import packaged_model_path

    model = PairModel()
    reference = AutoTokenizer.from_pretrained(packaged_model_path())
    long_point = " ".join(["The ablation of the attention temperature is missing."] * 30)
    pairs = [(BASELINES, POINTS[1]), (long_point, POINTS[2]), (POINTS[0], long_point)]
    expected = reference(
        [a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first", max_length=model.max_length
    )
    got = model.tokenizer.encode_batch(pairs)
    assert [e.ids for e in got] == expected["input_ids"]
    assert [e.type_ids for e in got] == expected["token_type_ids"]
    assert max(len(e.ids) for e in got) == model.max_length


def test_the_pair_model_scores_a_paraphrase_above_an_unrelated_point():
    model = PairModel()
    paraphrase = "There is no comparison against competitive baseline models like BERT and RoBERTa."
    logits = model.logits([canonical(BASELINES, paraphrase), canonical(BASELINES, POINTS[2]), ("", "")])
    assert np.isfinite(logits).all() and logits[0] > logits[1] + 2
    batched = model.logits(
        [canonical(BASELINES, paraphrase)] * 3 + [canonical(POINTS[1], long) for long in POINTS]
    )
    assert batched[:3] == pytest.approx([logits[0]] * 3, abs=1e-4)  # padding in a batch changes nothing


def test_matching_either_way_round_gives_the_same_pairs(matcher):
    generated = [BASELINES, "Hyper-parameters are not reported.", POINTS[1]]
    reference = [
        "No baselines like BERT are compared.",
        "The hyper-parameter settings are missing.",
        POINTS[2],
    ]
    (forward,) = matcher.match_many([(generated, reference)])
    (backward,) = matcher.match_many([(reference, generated)])
    assert sorted((m.generated, m.reference) for m in forward) == sorted(
        (m.reference, m.generated) for m in backward
    )


def test_a_calibration_fitted_for_another_pair_model_is_refused(matcher, tmp_path: Path):
    shipped = matcher.calibration
    other = MatcherCalibration(shipped.candidates, shipped.threshold, "0000beef", shipped.agreement)
    with pytest.raises(FailedPrecondition, match=r"fitted for pair model 0000beef.*refit it"):
        other.check_fits(matcher.pair_model)
    other.write(tmp_path / "calibration.json")
    assert MatcherCalibration.load(tmp_path / "calibration.json") == other
    (tmp_path / "broken.json").write_text('{"threshold": 0.5}')
    with pytest.raises(FailedPrecondition, match="not a calibration this matcher can read"):
        MatcherCalibration.load(tmp_path / "broken.json")


def test_an_incomplete_pair_model_says_how_to_get_one(tmp_path: Path):
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(FailedPrecondition, match=r"pair model is incomplete.*make install"):
        PairModel(PairModelFiles(tmp_path))


@pytest.fixture(scope="module")
def lomo(marg_units, matcher, bench) -> dict[str, dict]:
    """The benchmark's leave-one-method-out protocol over the committed scores of training runs: the
    shipped student's (bench/results/pair_model_distilled/student-64), its teacher's, the 6-layer model's
    shipped before it, the dropped cross-paper recipe's; and the static cosine. All through the shipped
    candidate policy."""
    cosines = bench.cosine_matrices(marg_units, lambda texts: matcher.encoder.encode(texts).vectors)
    splits = bench.protocols(marg_units)["leave-one-method-out"]
    policy = matcher.calibration.candidates
    runs = {
        "default": RESULTS / "pair_model_distilled" / "student-64",
        "teacher": RESULTS / "pair_model_distilled",
        "6-layer, shipped before": RESULTS / "pair_model_training",
        "cross-paper teacher": RESULTS / "pair_model_cross_paper",
        "cross-paper student": RESULTS / "pair_model_cross_paper" / "student",
    }
    results = {"static cosine": bench.run_protocol(marg_units, splits, bench.best_cosine_scores(cosines))}
    for name, folder in runs.items():
        score = bench.matcher_scores(cosines, bench.PairScores(folder, marg_units), policy)
        results[name] = bench.run_protocol(marg_units, splits, score)
    return results


def test_leave_one_method_out_agreement_is_what_the_report_quotes(lomo, matcher):
    agreement = matcher.calibration.agreement
    assert lomo["default"]["mean_f1"] == pytest.approx(agreement["f1"], abs=0.005)
    assert lomo["default"]["mean_f1_interval"] == pytest.approx(agreement["interval"], abs=0.005)
    assert lomo["default"]["mean_f1"] >= lomo["static cosine"]["mean_f1"] + 0.05


def test_thirty_papers_cannot_tell_the_recipes_apart(lomo):
    """Two runs of one recipe and seed on the GPU (the 6-layer model shipped before, the student's
    teacher) differ by more than the student loses to its teacher, and the 95 % paper-bootstrap
    interval of any of them is wider than every gap between them: docs/benchmarks.md's reason to ship
    the 5x faster student."""
    assert lomo["6-layer, shipped before"]["mean_f1"] == pytest.approx(0.318, abs=0.005)
    assert lomo["teacher"]["mean_f1"] == pytest.approx(0.304, abs=0.005)
    means = [lomo[k]["mean_f1"] for k in ("default", "teacher", "6-layer, shipped before")]
    low, high = lomo["default"]["mean_f1_interval"]
    assert low <= min(means) and max(means) <= high and high - low > 3 * (max(means) - min(means))


def test_the_dropped_cross_paper_recipe_scores_what_the_benchmarks_page_says(lomo):
    """docs/benchmarks.md drops cross-paper negatives (and their 2-layer students): with the shipped
    candidate policy the committed scores of that run stay below every run of the shipped recipe (by
    less than the papers can resolve, and it did not cure the generic-review control either)."""
    assert lomo["cross-paper teacher"]["mean_f1"] == pytest.approx(0.275, abs=0.005)
    assert lomo["cross-paper student"]["mean_f1"] == pytest.approx(0.274, abs=0.005)
    assert max(lomo[k]["mean_f1"] for k in ("cross-paper teacher", "cross-paper student")) < min(
        lomo[k]["mean_f1"] for k in ("default", "teacher", "6-layer, shipped before")
    )


def test_the_shipped_matcher_agrees_with_gpt4_on_marg(marg_units, matcher, bench):
    """On lizca's reviews (the fewest pairs to read: 4 comments a paper), end to end through the int8
    model and the shipped threshold: 0.540 measured, in-sample."""
    truth, decided = bench.hit_decisions([u for u in marg_units if u.method == "lizca"], matcher)
    assert len(truth) == 483  # the human comments of the 30 papers
    assert hit_f1(truth, decided) >= SHIPPED_F1_FLOOR


@pytest.mark.xfail(strict=True, reason="the issue's target, F1 ≥ 0.35 on unseen generators, is not reached")
def test_the_issues_target_agreement(lomo):
    assert lomo["default"]["mean_f1"] >= TARGET_LOMO_F1


@pytest.mark.xfail(
    strict=True, reason="the pair matcher credits generic text: precision 0.27 against GPT-4's 0.10"
)
def test_a_generic_review_gets_fewer_hits_than_gpt4_gives_real_comments(marg_units, matcher, bench):
    precision, gpt4 = bench.generic_control(marg_units, matcher)
    assert precision < gpt4


def test_no_threshold_both_refuses_generic_text_and_beats_cosine(marg_units, matcher, lomo, bench):
    """The trade-off docs/benchmarks.md records: every fixed threshold at which the shipped pair model
    gives the canned review fewer hits on MARG than GPT-4 gives real comments leaves its agreement with
    GPT-4 on unseen generators no better than the static cosine's. A threshold cannot make it safe
    from generic text; that is why it is not the default."""
    cosines = bench.cosine_matrices(marg_units, lambda texts: matcher.encoder.encode(texts).vectors)
    scores = bench.PairScores(RESULTS / "pair_model_distilled" / "student-64", marg_units)
    score = bench.matcher_scores(cosines, scores, matcher.calibration.candidates)
    rows = bench.threshold_tradeoff(marg_units, score, matcher, bench.TRADEOFF_THRESHOLDS)
    _, gpt4 = bench.generic_control(marg_units, matcher)
    refusing = [row for row in rows if row["generic_precision"] < gpt4]
    assert [row["threshold"] for row in refusing] == [0.6, 0.7, 0.8]
    assert max(row["lomo_mean_f1"] for row in refusing) <= lomo["static cosine"]["mean_f1"] + 0.005
