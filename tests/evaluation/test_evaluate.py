"""The evaluation as a whole on toys whose every number is counted by hand: paper choice, one batched
matcher call, the human leave-one-out, like-for-like scoring, pairwise entries, exclusions, lineage."""

from __future__ import annotations

import json
from typing import Any

import pytest

from reviewstack.common.errors import FailedPrecondition, InvalidArgument
from reviewstack.evaluation.evaluate import REPORT_FORMAT, evaluate
from reviewstack.evaluation.model import Exclusion

from .toys import HUMAN, ExactMatcher, free, humans, system, toy_systems


def _per_paper(entry: dict[str, Any], paper: str) -> dict[str, Any]:
    return next(p for p in entry["per_paper"] if p["paper_id"] == paper)


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    matcher = ExactMatcher()
    progress: list[tuple[str, int, int, str]] = []
    out = evaluate(
        toy_systems(),
        humans(HUMAN),
        matcher,
        exclusions=[Exclusion("p7", "not in the ground truth")],
        bootstrap=200,
        seed=1,
        progress=lambda *a: progress.append(a),
    )
    out["_calls"], out["_progress"] = matcher.calls, progress
    return out


def test_one_batched_matcher_call_and_progress(report: dict[str, Any]) -> None:
    # p1..p3 (p4 only gpt has). Systems: 3 × 3 pairs. Leave-one-out: p1 has 3 reviewers, p2 2, p3 one
    # (none): 5 human splits, plus 5 per system in the like-for-like frame.
    assert report["_calls"] == [9 + 5 + 3 * 5]
    stages = [p[0] for p in report["_progress"]]
    assert stages[0] == "matching" and "metrics" in stages and stages[-1] == "pairwise"
    assert ("matching", 29, 29, "done") in report["_progress"]


def test_papers_lineage_and_format(report: dict[str, Any]) -> None:
    assert report["format"] == REPORT_FORMAT
    assert report["papers"] == ["p1", "p2", "p3"]
    assert report["matcher"] == {"name": "exact", "version": "test-1", **ExactMatcher().describe()}
    assert report["settings"]["bootstrap"] == 200 and report["settings"]["seed"] == 1
    inputs = {i["name"]: i for i in report["inputs"]["systems"]}
    assert inputs["ft-0"]["uri"] == "file:///store/reviews/ft-0"
    assert inputs["ft-0"]["lineage"] == {"run_id": "r-1"}
    assert inputs["ft-0"]["refusal_penalty"] == 0.0
    assert inputs["ft-0"]["review_lineage"] == {
        "common": {"model": "m", "parameters.refusal_penalty": 0.0, "parameters.temperature": 0.0},
        "varies": [],
    }
    assert (inputs["gpt"]["papers_loaded"], inputs["gpt"]["papers_used"], inputs["gpt"]["kind"]) == (
        4,
        3,
        "imported",
    )
    assert report["inputs"]["human"]["lineage"] == {"dataset": "gt/v1"}
    json.dumps({k: v for k, v in report.items() if not k.startswith("_")}, allow_nan=False)


def test_exclusions_are_carried_with_their_reasons(report: dict[str, Any]) -> None:
    found = {(e["source"], e["what"]): e["reason"] for e in report["exclusions"]}
    assert found[("ft-0", "reviews/ft-0/p9.json")] == "not JSON"  # the loader's
    assert found[("alignment", "p7")] == "not in the ground truth"  # the caller's
    assert "ft-0, ft-2" in found[("evaluation", "p4")]  # p4: only gpt reviewed it
    assert "no leave-one-out" in found[("evaluation", "p3")]  # one reviewer
    assert report["inputs"]["systems"][0]["exclusions"] == [
        {"what": "reviews/ft-0/p9.json", "reason": "not JSON", "source": "ft-0"}
    ]


def test_system_scored_against_all_human_points(report: dict[str, Any]) -> None:
    ft0 = report["systems"][0]
    p1 = _per_paper(ft0, "p1")
    # a d x9 against a b c a d b d e: a and d hit → 2 of 8 human points, 2 of 3 generated points
    assert (p1["hits"], p1["reference_points"], p1["generated_points"]) == (2, 8, 3)
    assert p1["recall"] == pytest.approx(2 / 8) and p1["precision"] == pytest.approx(2 / 3)
    # p2: y against x y y z → 1 of 4, 1 of 1; p3: q against q → 1 of 1
    assert ft0["overall"]["recall"]["mean"] == pytest.approx((2 / 8 + 1 / 4 + 1) / 3)
    assert ft0["overall"]["hits"]["mean"] == pytest.approx(4 / 3)
    assert ft0["overall"]["micro"]["hits"] == 4 and ft0["overall"]["micro"]["reference_points"] == 13
    assert ft0["statistics"]["structured"] and ft0["refusal_penalty"] == 0.0


def test_human_leave_one_out_on_three_reviewers(report: dict[str, Any]) -> None:
    h = report["human"]
    p1 = _per_paper(h, "p1")
    # r1 (a b c) vs a d b d e: a, b → 2 of 5, precision 2/3
    # r2 (a d)   vs a b c b d e: a, d → 2 of 6, precision 1
    # r3 (b d e) vs a b c a d: b, d → 2 of 5, precision 2/3
    assert p1["reviewers"] == 3
    assert p1["hits"] == pytest.approx(2.0)
    assert p1["recall"] == pytest.approx((2 / 5 + 2 / 6 + 2 / 5) / 3)
    assert p1["precision"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert [s["reviewer"] for s in p1["splits"]] == ["r1", "r2", "r3"]
    assert [s["recall"] for s in p1["splits"]] == pytest.approx([0.4, 1 / 3, 0.4])
    # p2: r1 (x y) vs y z → y: recall ½, precision ½; r2 (y z) vs x y → y: ½, ½
    assert _per_paper(h, "p2")["recall"] == pytest.approx(0.5)
    assert h["overall"]["papers"] == 2  # p3 has one reviewer
    assert h["overall"]["recall"]["mean"] == pytest.approx(((2 / 5 + 2 / 6 + 2 / 5) / 3 + 0.5) / 2)
    assert h["reviewers_per_paper"]["counts"] == [0, 1, 1, 1]
    assert not h["statistics"]["structured"]


def test_like_for_like_frame_and_pairwise_against_humans(report: dict[str, Any]) -> None:
    ft0 = report["systems"][0]
    p1 = _per_paper(ft0["leave_one_out"], "p1")
    # ft-0's a d x9 against each split's references: a d b d e → 2/5, a b c b d e → 2/6, a b c a d → 2/5
    assert p1["recall"] == pytest.approx((2 / 5 + 2 / 6 + 2 / 5) / 3)
    assert p1["precision"] == pytest.approx(2 / 3)
    vs_human = next(c for c in report["pairwise"] if c["a"] == "ft-0" and c["b"] == "human")
    assert vs_human["frame"] == "leave-one-out" and vs_human["papers"] == 2
    # hits: p1 2 vs 2 (tie); p2: ft-0's y vs y z → 1 hit, vs x y → 1 hit: mean 1 vs humans' 1 → tie
    assert (vs_human["hits"]["wins"], vs_human["hits"]["ties"], vs_human["hits"]["losses"]) == (0, 2, 0)
    assert vs_human["hits"]["p_value"] is None
    # precision: p1 2/3 vs 7/9 → loss; p2 1 vs ½ → win
    assert (vs_human["precision"]["wins"], vs_human["precision"]["losses"]) == (1, 1)


def test_pairwise_for_every_pair_of_systems(report: dict[str, Any]) -> None:
    pairs = [(c["a"], c["b"], c["frame"]) for c in report["pairwise"]]
    assert pairs[:3] == [
        ("ft-0", "ft-2", "all human points"),
        ("ft-0", "gpt", "all human points"),
        ("ft-2", "gpt", "all human points"),
    ]
    assert len(pairs) == 3 + 3
    ft0_ft2 = report["pairwise"][0]
    # hits ft-0 vs ft-2: p1 2 vs 3 (a b e), p2 1 vs 2 (x z), p3 1 vs 0 → 1 win, 2 losses
    assert (ft0_ft2["hits"]["wins"], ft0_ft2["hits"]["losses"]) == (1, 2)
    assert report["pairwise"][1]["papers"] == 3


def test_penalty_sweep_from_lineage(report: dict[str, Any]) -> None:
    (sweep,) = report["penalty_sweeps"]
    assert [(p["system"], p["refusal_penalty"]) for p in sweep["points"]] == [("ft-0", 0.0), ("ft-2", 2.0)]
    # ft-0 left 5+6+6 of 21 aspects empty, ft-2 4+5+6
    assert sweep["points"][0]["empty_aspect_rate"] == pytest.approx(17 / 21)
    assert sweep["points"][1]["empty_aspect_rate"] == pytest.approx(15 / 21)
    assert sweep["settings"] == {"model": "m", "parameters.temperature": 0.0}


def test_given_papers_are_used_and_missing_reviews_reported() -> None:
    out = evaluate(toy_systems(), humans(HUMAN), ExactMatcher(), papers=["p2", "p1", "p5"], bootstrap=0)
    assert out["papers"] == ["p2", "p1"]
    reasons = {e["what"]: e["reason"] for e in out["exclusions"] if e["source"] == "evaluation"}
    assert "no reviews in 'human'" in reasons["p5"]
    assert out["systems"][0]["overall"]["recall"]["low"] is None  # bootstrap=0: no intervals


def test_without_the_frame_fewer_matcher_calls_and_no_human_comparison() -> None:
    matcher = ExactMatcher()
    out = evaluate(toy_systems(), humans(HUMAN), matcher, bootstrap=0, leave_one_out_frame=False)
    assert matcher.calls == [9 + 5]
    assert all(c["frame"] == "all human points" for c in out["pairwise"])
    assert "leave_one_out" not in out["systems"][0]


def test_inputs_a_user_must_fix() -> None:
    with pytest.raises(InvalidArgument, match="unique"):
        evaluate([system("human", [free("p1", "a")])], humans(HUMAN), ExactMatcher())
    with pytest.raises(FailedPrecondition, match="no paper is left"):
        evaluate([system("s", [free("p9", "a")])], humans(HUMAN), ExactMatcher())
    two = system("s", [free("p1", "a")])
    two.reviews["p1"].append(free("p1", "b"))
    with pytest.raises(InvalidArgument, match="one review per paper"):
        evaluate([two], humans(HUMAN), ExactMatcher())

    class Short(ExactMatcher):
        def match_many(self, pairs: Any) -> list[Any]:
            return super().match_many(pairs)[:-1]

    with pytest.raises(FailedPrecondition, match="matcher 'exact'"):
        evaluate([system("s", [free("p1", "a")])], humans(HUMAN), Short())


class _FailingOnFirstPair(ExactMatcher):
    """A judge whose first pair failed (an unreadable answer): that pair must be left out and reported."""

    name = "flaky"

    def match_many(self, pairs):  # type: ignore[no-untyped-def]
        results = super().match_many(pairs)
        self.failures = {0: "the judge's answer was unreadable"}
        return [[], *results[1:]]


def test_a_pair_the_matcher_could_not_judge_is_reported_not_scored_zero() -> None:
    systems = toy_systems()
    out = evaluate(systems, humans(HUMAN), _FailingOnFirstPair(), bootstrap=0, leave_one_out_frame=False)
    first_paper = out["papers"][0]  # pair 0 is the first system's review of the first paper
    scored = {p["paper_id"] for p in out["systems"][0]["per_paper"]}
    assert first_paper not in scored and len(scored) == len(out["papers"]) - 1
    reasons = [e["reason"] for e in out["exclusions"] if e.get("paper_id") == first_paper]
    assert any("could not judge" in r and "unreadable" in r for r in reasons)
