"""The default matcher ("embedded"): its contract (one-to-one, empty inputs, the one-call API) on
hand-written points, and its agreement with GPT-4 on the real MARG alignment data.

The static model it needs is distilled once per environment (half a minute to three minutes on two
cores, the first time any test here runs); after that every test is quick."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from reviewstack.common.errors import InvalidArgument
from reviewstack.evaluation.matching import EmbeddedMatcher, default_matcher
from reviewstack.evaluation.model import Match, Matcher

# Hit-decision F1 against GPT-4 with the shipped constants on all of marg-alignments-dev, paper frame:
# bench/matcher_agreement.py measured 0.38 in-sample (the constants were fitted on these papers) and 0.33
# held out (cross-validated by paper); plain MiniLM cosine reaches 0.27 / 0.25. The floor leaves room
# for a static model distilled on another machine. The issue's target, 0.5, is not reached by this
# matcher: `test_the_issues_target_agreement` records that, and fails loudly (XPASS) once it is.
F1_FLOOR = 0.35
TARGET_F1 = 0.5

BASELINES = "The paper does not compare the proposed method with strong baselines such as BERT or RoBERTa."
POINTS = [
    BASELINES,
    "The convergence proof assumes a convex loss, which does not hold for deep networks.",
    "Several figures have captions that are too small to read, and the notation in Section 3 is unclear.",
]


@pytest.fixture(scope="module")
def matcher() -> EmbeddedMatcher:
    return default_matcher()


@pytest.fixture(scope="module", params=["embedded", "pair"])
def any_matcher(request: pytest.FixtureRequest, matcher: EmbeddedMatcher) -> Matcher:
    """Both no-LLM matchers: the contract below holds for each."""
    if request.param == "embedded":
        return matcher
    from reviewstack.evaluation.matching_pair import pair_matcher

    return pair_matcher()


def test_identical_points_match_each_other(any_matcher):
    (matches,) = any_matcher.match_many([(POINTS, POINTS)])
    assert sorted((m.generated, m.reference) for m in matches) == [(0, 0), (1, 1), (2, 2)]
    assert all(0 < m.score <= 1 for m in matches)


def test_a_paraphrase_matches():
    from reviewstack.evaluation import match_points

    generated = [
        "There is no comparison against competitive baseline models like BERT and RoBERTa.",
        "The authors should release their code.",
    ]
    matches = match_points(generated, [BASELINES])
    assert [(g, r) for g, r, _ in matches] == [(0, 0)]


def test_unrelated_points_do_not_match(any_matcher):
    generated = ["The font in Figure 4 is too small to read."]
    reference = [
        "The regret bound in Theorem 2 depends exponentially on the horizon, which is not discussed."
    ]
    assert any_matcher.match_many([(generated, reference)]) == [[]]


def test_matching_is_one_to_one(any_matcher):
    generated = [BASELINES, BASELINES, "Missing comparison with strong baselines such as BERT.", POINTS[1]]
    reference = [BASELINES, "No baselines like BERT are compared.", POINTS[1], POINTS[1]]
    (matches,) = any_matcher.match_many([(generated, reference)])
    assert len({m.generated for m in matches}) == len(matches)
    assert len({m.reference for m in matches}) == len(matches)
    assert all(0 <= m.generated < len(generated) and 0 <= m.reference < len(reference) for m in matches)


def test_empty_inputs_give_no_matches(matcher, any_matcher):
    from reviewstack.evaluation import match_points

    assert match_points([], []) == []
    assert match_points([], POINTS) == []
    assert match_points(POINTS, []) == []
    for each in (matcher, any_matcher):
        assert each.match_many([]) == []
        assert each.match_many([([], POINTS), (POINTS, [])]) == [[], []]
        assert each.match_many([([""], ["   "])]) == [[]]  # a point with no words matches nothing


def test_the_one_call_api_returns_index_index_score_tuples():
    from reviewstack.evaluation import match_points

    result = match_points(POINTS, list(reversed(POINTS)))
    assert isinstance(result, list) and result
    for item in result:
        assert isinstance(item, tuple) and len(item) == 3
        g, r, score = item
        assert type(g) is int and type(r) is int and type(score) is float
    assert sorted((g, r) for g, r, _ in result) == [(0, 2), (1, 1), (2, 0)]


def test_batching_across_papers_does_not_change_the_decisions(any_matcher):
    other = (["Hyper-parameters are not reported.", POINTS[2]], ["The hyper-parameter settings are missing."])
    alone = any_matcher.match_many([(POINTS, POINTS[:2])]) + any_matcher.match_many([other])
    assert any_matcher.match_many([(POINTS, POINTS[:2]), other]) == alone


def test_it_is_a_matcher_that_reports_its_version(matcher):
    assert matcher.name == "embedded" and matcher.version.startswith("minilm-l6-v2-static256+cal-")
    assert isinstance(matcher.match_many([(POINTS[:1], POINTS[:1])])[0][0], Match)
    with pytest.raises(InvalidArgument, match="points must be strings"):
        matcher.match_many([([1], POINTS)])  # type: ignore[list-item]


@pytest.fixture(scope="module")
def marg_hits(marg_units: list, bench: ModuleType) -> tuple[np.ndarray, np.ndarray]:
    """GPT-4's hit decisions on marg-alignments-dev and the default matcher's (paper frame)."""
    return bench.hit_decisions(marg_units, default_matcher())


def hit_f1(truth: np.ndarray, decided: np.ndarray) -> float:
    tp = int((truth & decided).sum())
    return 2 * tp / (int(truth.sum()) + int(decided.sum()))


def test_agreement_with_gpt4_on_marg_stays_at_the_benchmarked_level(marg_hits):
    truth, decided = marg_hits
    assert len(truth) == 3 * 483 and int(truth.sum()) == 161  # three methods × 483 human comments
    assert hit_f1(truth, decided) >= F1_FLOOR


@pytest.mark.xfail(
    strict=True, reason="the issue's target F1 ≥ 0.5 is not reached (bench/matcher_agreement.py)"
)
def test_the_issues_target_agreement(marg_hits):
    assert hit_f1(*marg_hits) >= TARGET_F1


def test_a_generic_review_gets_fewer_hits_than_gpt4_gives_real_comments(marg_units, matcher, bench):
    """A canned review that says nothing about any paper, against each MARG paper's human comments: the
    share of its points the matcher calls hits stays under the share of GPT-4 reviewers' comments GPT-4
    aligned (0.03 against 0.10 measured)."""
    precision, gpt4 = bench.generic_control(marg_units, matcher)
    assert precision < gpt4


@pytest.mark.xfail(
    strict=True,
    reason="no matcher here reads what a comment says about its paper: `embedded` hits 83 % as many of "
    "lizca's comments on the wrong paper as on the right one (docs/benchmarks.md, wrong-paper control)",
)
def test_comments_hit_far_fewer_human_comments_of_another_paper(marg_units, matcher, bench):
    """Each MARG method's comments against the next paper's human comments, where every hit is wrong:
    the default matcher should call at most half as many hits there as on the comments' own paper."""
    control = bench.wrong_paper_control(marg_units, matcher)
    assert all(c["wrong_paper"] <= 0.5 * c["right_paper"] for c in control.values()), control


def test_the_benchmark_refits_the_default_and_reproduces_what_reports_quote(marg_units, matcher, bench):
    """The default's agreement in every report comes from bench/matcher_agreement.py refitting both of
    its stages per protocol: refitted on all of MARG it scores what the shipped constants score
    in-sample, and its leave-one-method-out F1 and interval are the calibration's."""
    refit = bench.embedded_scores(marg_units, matcher)
    splits = bench.protocols(marg_units)
    in_sample = bench.run_protocol(marg_units, splits["in-sample"], refit)
    lomo = bench.run_protocol(marg_units, splits["leave-one-method-out"], refit)
    shipped = hit_f1(*bench.hit_decisions(marg_units, matcher))
    assert in_sample["mean_f1"] == pytest.approx(shipped, abs=0.01)
    agreement = matcher.describe()["agreement"]
    assert lomo["mean_f1"] == pytest.approx(agreement["f1"], abs=0.005)
    assert lomo["mean_f1_interval"] == pytest.approx(agreement["interval"], abs=0.005)
