"""Metrics against numbers counted by hand: per paper, per aspect, over papers, pairwise, review
statistics and the penalty sweep's grouping."""

from __future__ import annotations

import json

import pytest

from reviewstack.common.aspects import SEVEN_ASPECTS
from reviewstack.evaluation.metrics import (
    PaperScore,
    compare,
    interval,
    mean_over_reviewers,
    score_paper,
    summarize,
)
from reviewstack.evaluation.model import Match, Point, Review
from reviewstack.evaluation.records import review_from_record
from reviewstack.evaluation.review_stats import review_statistics
from reviewstack.evaluation.sweep import penalty_sweeps, refusal_penalty, settings

from .toys import ASPECTS, ExactMatcher, free, structured, system

GENERATED = (
    Point("A", "rejection"),
    Point("B", "acceptance"),
    Point("C", "rejection"),
    Point("X", "other"),
)
REFERENCE = (
    Point("a", "weakness"),
    Point("b", "strength"),
    Point("d", "weakness"),
    Point("e", "weakness"),
    Point("f", "question"),
)


def _score(paper: str, generated: tuple[Point, ...], reference: tuple[Point, ...]) -> PaperScore:
    texts = ([p.text for p in generated], [p.text for p in reference])
    return score_paper(paper, generated, reference, ExactMatcher().match_many([texts])[0])


def test_paper_score_counted_by_hand() -> None:
    s = _score("p", GENERATED, REFERENCE)
    # A↔a and B↔b: 2 of 5 human points hit, 2 of 4 generated points hit.
    assert (s.generated, s.reference, s.hits, s.generated_hit) == (4, 5, 2, 2)
    assert s.recall == pytest.approx(0.4)
    assert s.precision == pytest.approx(0.5)
    assert s.f1 == pytest.approx(2 * 0.4 * 0.5 / 0.9)  # 0.444…
    # recall by the human points' aspect: weakness a hit of a, d, e; strength b hit; question f missed
    assert s.recall_by_aspect == {"weakness": (1, 3), "strength": (1, 1), "question": (0, 1)}
    # precision by the generated points' aspect: rejection A of A, C; acceptance B; other X missed
    assert s.precision_by_aspect == {"rejection": (1, 2), "acceptance": (1, 1), "other": (0, 1)}


def test_empty_review_has_no_precision_and_zero_recall() -> None:
    s = _score("p", (), REFERENCE)
    assert (s.hits, s.recall, s.precision, s.f1) == (0, 0.0, None, None)


def test_hits_count_distinct_reference_points_and_bad_indices_raise() -> None:
    # a matcher breaking the one-to-one rule cannot count one human point twice
    s = score_paper("p", GENERATED, REFERENCE, [Match(0, 0, 1.0), Match(2, 0, 0.9)])
    assert (s.hits, s.generated_hit) == (1, 2)
    with pytest.raises(IndexError, match="paper p"):
        score_paper("p", GENERATED, REFERENCE, [Match(4, 0, 1.0)])


def _fake(paper: str, hits: float, reference: float, generated: float) -> PaperScore:
    recall = hits / reference if reference else None
    precision = hits / generated if generated else None
    return PaperScore(paper, generated, reference, hits, hits, recall, precision, None)


def test_summary_means_over_papers_and_micro_totals() -> None:
    scores = [_fake("p1", 2, 5, 4), _fake("p2", 3, 3, 6), _fake("p3", 1, 10, 0)]
    out = summarize(scores, resamples=200, seed=0)
    assert out["papers"] == 3
    # recall 0.4, 1.0, 0.1 → mean 0.5; precision 0.5, 0.5 and none (no points) → 0.5 over 2 papers
    assert out["recall"]["mean"] == pytest.approx(0.5)
    assert out["recall"]["n"] == 3
    assert (out["precision"]["mean"], out["precision"]["n"]) == (pytest.approx(0.5), 2)
    assert out["hits"]["mean"] == pytest.approx(2.0)
    # pooled: 6 hits of 18 human points, 6 of 10 generated points
    micro = out["micro"]
    assert (micro["hits"], micro["reference_points"], micro["generated_points"]) == (6, 18, 10)
    assert micro["recall"] == pytest.approx(6 / 18)
    assert micro["precision"] == pytest.approx(0.6)


def test_bootstrap_interval_contains_the_mean_and_is_reproducible() -> None:
    values = [0.1, 0.4, 0.35, 0.8, 0.5, 0.2, 0.65, 0.3]
    first = interval(values, resamples=500, seed=7)
    assert first["low"] < first["mean"] < first["high"]
    assert first["mean"] == pytest.approx(sum(values) / len(values))
    assert interval(values, resamples=500, seed=7) == first
    assert interval(values, resamples=500, seed=8) != first
    # one paper, or no resampling, gives no interval rather than a fake one
    assert interval([0.3], resamples=500, seed=0) == {"mean": 0.3, "low": None, "high": None, "n": 1}
    assert interval(values, resamples=0, seed=0)["low"] is None
    assert interval([], resamples=500, seed=0)["mean"] is None


def test_per_aspect_summary_is_over_papers_having_the_aspect() -> None:
    s1 = _score("p1", GENERATED, REFERENCE)  # weakness 1/3
    s2 = _score("p2", (Point("d", "idea"),), (Point("d", "weakness"),))  # weakness 1/1, no strength
    out = summarize([s1, s2], resamples=100, seed=0)["per_aspect"]
    weakness = out["recall"]["weakness"]
    assert weakness["mean"] == pytest.approx((1 / 3 + 1) / 2)
    assert (weakness["matched"], weakness["points"], weakness["n"]) == (2, 4, 2)
    assert out["recall"]["strength"]["n"] == 1  # p2 has no strength point: not a 0 averaged in
    assert out["precision"]["idea"]["mean"] == pytest.approx(1.0)


def test_mean_over_reviewers_averages_defined_values() -> None:
    a = PaperScore("p", 3, 5, 2, 2, 0.4, 2 / 3, 0.5)
    b = PaperScore("p", 0, 6, 0, 0, 0.0, None, None)
    m = mean_over_reviewers([a, b])
    assert (m.hits, m.recall, m.precision, m.f1, m.reviewers) == (1.0, 0.2, 2 / 3, 0.5, 2)


def test_pairwise_seven_wins_two_losses_one_tie() -> None:
    a_hits = [5, 4, 6, 3, 7, 2, 5, 1, 2, 3]
    b_hits = [2, 1, 3, 1, 4, 1, 2, 3, 4, 3]  # A ahead on 7 papers, behind on 2, level on the last
    a = {f"p{i}": _fake(f"p{i}", h, 10, 10) for i, h in enumerate(a_hits)}
    b = {f"p{i}": _fake(f"p{i}", h, 10, 10) for i, h in enumerate(b_hits)}
    out = compare(a, b, resamples=500, seed=0)
    hits = out["hits"]
    assert (out["papers"], hits["wins"], hits["ties"], hits["losses"]) == (10, 7, 1, 2)
    # sign test on 9 decisive papers: 2 · P(X ≤ 2), X ~ Bin(9, ½) = 2 · (1 + 9 + 36) / 512
    assert hits["p_value"] == pytest.approx(92 / 512)
    assert hits["win_share"] == pytest.approx(7 / 9)
    assert hits["win_share_low"] < 7 / 9 < hits["win_share_high"]
    # mean difference: (3+3+3+2+3+1+3−2−2+0) / 10 = 1.4
    assert hits["mean_difference"] == pytest.approx(1.4)
    assert hits["difference_low"] < 1.4 < hits["difference_high"]
    # precision = hits / 10 here: the same signs
    assert (out["precision"]["wins"], out["precision"]["losses"]) == (7, 2)


def test_pairwise_skips_papers_without_a_value_and_reports_no_test_without_decisive_papers() -> None:
    a = {"p1": _fake("p1", 2, 4, 0), "p2": _fake("p2", 1, 4, 2), "p3": _fake("p3", 1, 4, 4)}
    b = {"p1": _fake("p1", 1, 4, 2), "p2": _fake("p2", 1, 4, 2), "p4": _fake("p4", 1, 4, 2)}
    out = compare(a, b, resamples=100, seed=0)
    assert out["papers"] == 2  # p1, p2 in common
    assert (out["hits"]["wins"], out["hits"]["ties"]) == (1, 1)
    precision = out["precision"]  # p1: A has no points, no precision → only p2, a tie
    assert (precision["papers"], precision["ties"], precision["p_value"]) == (1, 1, None)


def test_review_statistics_counted_by_hand() -> None:
    r1 = structured("p1", {"idea": "a a2", "experiments": "b"})  # 3 items, 5 empty aspects
    r2 = structured("p2", {"idea": "c", "rejection": "d", "other": "e f"})  # 4 items, 4 empty
    out = review_statistics([r1, r2])
    assert out["structured"]
    assert out["items_per_review"] == {"mean": 3.5, "min": 3, "max": 4, "counts": [0, 0, 0, 1, 1]}
    assert out["empty_aspects_per_review"]["counts"] == [0, 0, 0, 0, 1, 1]
    assert out["empty_aspect_rate"] == pytest.approx(9 / 14)
    assert out["per_aspect"]["idea"] == {
        "reviews": 2,
        "items": 3,
        "items_per_review": 1.5,
        "empty": 0,
        "empty_rate": 0.0,
        "missing": 0,
        "missing_rate": 0.0,
    }
    assert out["missing_aspect_rate"] == 0.0
    assert out["per_aspect"]["acceptance"]["empty_rate"] == 1.0
    assert out["per_aspect"]["other"]["items"] == 2
    assert list(out["per_aspect"]) == [
        "idea",
        "prior_work",
        "experiments",
        "acceptance",
        "rejection",
        "suggestions",
        "other",
    ]


def test_aspects_a_review_never_reached_are_counted_apart_from_declined_ones() -> None:
    # p1 declined "prior_work" and was cut after "experiments": the last four were never written
    cut = Review(
        "p1",
        (Point("a", "idea"), Point("b", "experiments")),
        empty_aspects=("prior_work",),
        missing_aspects=("acceptance", "rejection", "suggestions", "other"),
        aspects=ASPECTS,
    )
    whole = structured("p2", {"idea": "c", "prior_work": "d", "experiments": "e"})  # declined 4
    out = review_statistics([cut, whole])
    assert out["empty_aspects_per_review"]["counts"] == [0, 1, 0, 0, 1]
    assert out["empty_aspect_rate"] == pytest.approx(5 / 14)
    assert out["missing_aspects_per_review"]["counts"] == [1, 0, 0, 0, 1]
    assert out["missing_aspect_rate"] == pytest.approx(4 / 14)
    assert out["per_aspect"]["other"]["empty"] == 1 and out["per_aspect"]["other"]["missing"] == 1


def _record(generated_tokens: int, aspects: list[dict], budget: int = 1150) -> bytes:
    return json.dumps(
        {
            "paper_id": "p1",
            "review": {"aspects": aspects, "text": ""},
            "generated_tokens": generated_tokens,
            "lineage": {"parameters": {"max_new_tokens": budget}},
        }
    ).encode()


def test_a_review_that_reached_its_budget_is_cut_short_and_not_well_formed() -> None:
    # every aspect begun in both; the second review ran to its budget inside its last aspect
    aspects = [{"name": a.criterion, "items": [f"point on {a.key}"]} for a in SEVEN_ASPECTS]
    ended = review_from_record(_record(700, aspects), "p1", {})
    cut = review_from_record(_record(1150, aspects), "p1", {})
    assert (ended.cut_short, cut.cut_short) == (False, True)
    assert not cut.missing_aspects  # the aspects alone would call it complete
    out = review_statistics([ended, cut])
    assert (out["cut_short_reviews"], out["well_formed_reviews"]) == (1, 1)
    assert out["missing_aspects_per_review"]["counts"] == [2]


def test_records_without_token_counts_read_as_not_cut() -> None:
    aspects = [{"name": a.criterion, "items": ["x"]} for a in SEVEN_ASPECTS]
    older = json.dumps({"paper_id": "p1", "review": {"aspects": aspects}}).encode()
    assert review_from_record(older, "p1", {}).cut_short is False
    assert review_from_record(_record(0, aspects, budget=0), "p1", {}).cut_short is False


def test_the_experiments_form_check_counts_what_the_evaluation_counts() -> None:
    """An experiment chooses candidates by reviewstack.common.review_record on validation reviews; the
    evaluation reports well-formed reviews of test papers: the same records must count the same."""
    from reviewstack.common.review_record import ReviewRecord

    whole = [{"name": a.criterion, "items": [f"point on {a.key}"]} for a in SEVEN_ASPECTS]
    declined = [{**whole[0], "items": ["<No related terms>"], "empty": True}, *whole[1:]]
    unreached = [*whole[:-1], {"name": SEVEN_ASPECTS[-1].criterion, "items": [], "missing": True}]
    records = [_record(700, whole), _record(1150, whole), _record(640, declined), _record(900, unreached)]
    reviews = [review_from_record(r, "p1", {}) for r in records]
    assert [ReviewRecord.from_json(r).well_formed for r in records] == [True, False, True, False]
    assert review_statistics(reviews)["well_formed_reviews"] == 2
    assert ReviewRecord.from_json(records[3]).unwritten_aspects == [SEVEN_ASPECTS[-1].criterion]
    assert not ReviewRecord.model_validate({"review": {"text": "free text, no aspects"}}).well_formed


def test_free_text_reviews_say_so_instead_of_zeros() -> None:
    out = review_statistics([free("p1", "a b c"), free("p2", "d")])
    assert out["items_per_review"]["mean"] == 2.0
    assert not out["structured"]
    assert "not structured by aspects" in out["note"]
    assert "empty_aspect_rate" not in out and "per_aspect" not in out


def test_refusal_penalty_and_settings_come_from_lineage() -> None:
    at_two = system("ft-2", [structured("p1", {"idea": "a"}, 2.0, model="m", backend="http://a", seed=1)])
    assert refusal_penalty(at_two) == 2.0
    assert settings(at_two) == {"model": "m", "parameters.temperature": 0.0}  # λ, seed, backend are free
    mixed = system("mixed", [structured("p1", {"idea": "a"}, 0.0), structured("p2", {"idea": "b"}, 1.0)])
    assert refusal_penalty(mixed) is None  # not one sweep point
    assert refusal_penalty(system("gpt", [free("p1", "a")], lineage={"refusal_penalty": 0.5})) == 0.5
    assert refusal_penalty(system("gpt", [free("p1", "a")])) is None


def test_sweeps_group_systems_that_differ_only_in_penalty() -> None:
    def make(name: str, penalty: float, model: str = "m") -> object:
        return system(name, [structured("p1", {"idea": "a"}, penalty, model=model, backend=name)])

    systems = [make("ft-2", 2.0), make("ft-0", 0.0), make("other-0", 0.0, "m2"), make("gpt", 0.0, "m3")]
    estimate = {"mean": 0.5, "low": 0.4, "high": 0.6, "n": 1}
    results = {
        s.name: {
            "overall": dict.fromkeys(("hits", "recall", "precision", "f1"), estimate),
            "statistics": {"items_per_review": {"mean": 1.0}, "empty_aspect_rate": 0.3},
        }
        for s in systems
    }
    sweeps = penalty_sweeps(systems, results)
    assert len(sweeps) == 1  # m2 and m3 have one λ each: no sweep
    assert [(p["system"], p["refusal_penalty"]) for p in sweeps[0]["points"]] == [
        ("ft-0", 0.0),
        ("ft-2", 2.0),
    ]
    assert sweeps[0]["settings"]["model"] == "m"
