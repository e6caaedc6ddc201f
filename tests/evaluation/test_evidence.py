"""points.json and the comparison built from it, on the toys (exact-text matcher: a hit joins two points
with the same text, so every index can be checked by its text): the texts are in the order the report's
matches index, they are written before report.json, and ComparePaper's defaults and refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reviewstack.common.errors import FailedPrecondition, InvalidArgument, NotFound
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import LocalStore
from reviewstack.evaluation import evidence, job
from reviewstack.evaluation.evaluate import evaluate
from reviewstack.evaluation.job import EvalConfig, Inputs, SystemSpec, run_evaluation
from reviewstack.evaluation.service import paper_comparison
from reviewstack.v1 import evaluation_pb2

from .toys import HUMAN, ExactMatcher, humans, toy_systems

EVAL_ID = "20260101-000000-abcd1234"


@pytest.fixture(scope="module")
def evaluated() -> tuple[dict[str, Any], dict[str, Any]]:
    systems, human = toy_systems(), humans(HUMAN)
    report = evaluate(systems, human, ExactMatcher(), bootstrap=0)
    report["eval_id"] = EVAL_ID
    # through JSON, as the service reads them back
    return json.loads(json.dumps(report)), json.loads(json.dumps(evidence.build(report, systems, human)))


def test_every_match_joins_the_points_it_names(evaluated: tuple[dict[str, Any], dict[str, Any]]) -> None:
    report, points = evaluated
    assert points["format"] == evidence.FORMAT and list(points["papers"]) == report["papers"]
    # p1: reviewer r1 raised a b c, r2 a d, r3 b d e, in that order
    assert [(p["text"], p["reviewer"]) for p in points["papers"]["p1"]["human"]] == [
        ("a", "r1"), ("b", "r1"), ("c", "r1"), ("a", "r2"), ("d", "r2"),
        ("b", "r3"), ("d", "r3"), ("e", "r3"),
    ]  # fmt: skip
    checked = 0
    for entry in report["systems"]:
        for scored in entry["per_paper"]:
            on_paper = points["papers"][scored["paper_id"]]
            review = on_paper["systems"][entry["name"]]
            assert len(review["points"]) == scored["generated_points"]
            assert len(on_paper["human"]) == scored["reference_points"]
            for generated, reference, _ in scored["matches"]:
                assert review["points"][generated]["text"] == on_paper["human"][reference]["text"]
                checked += 1
    assert checked == 4 + 5 + 3  # ft-0: a d, y, q; ft-2: a b e, x z; gpt: a, y z
    ft2 = points["papers"]["p1"]["systems"]["ft-2"]
    assert [(p["text"], p["aspect"]) for p in ft2["points"]] == [
        ("a", "idea"), ("b", "idea"), ("e", "rejection"), ("n1", "other"),
    ]  # fmt: skip
    assert "experiments" in ft2["empty_aspects"] and ft2["missing_aspects"] == []
    assert points["papers"]["p2"]["systems"]["gpt"]["points"][0] == {"text": "y", "aspect": None}


def test_points_json_is_written_before_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []

    class Recording(LocalStore):
        def put_bytes(self, key: str, data: bytes, *, exclusive: bool = False) -> Any:
            written.append(key)
            return super().put_bytes(key, data, exclusive=exclusive)

    monkeypatch.setattr(job, "open_store", lambda uri, settings=None: Recording(uri))
    monkeypatch.setattr("reviewstack.evaluation.report.plots.render_all", lambda report: {})
    systems, human = toy_systems(), humans(HUMAN)
    config = EvalConfig(
        systems=[SystemSpec(name=s.name, uri=s.uri) for s in systems], human=human.uri, output=str(tmp_path)
    )
    outcome = run_evaluation(
        config, StoreSettings(), matcher=ExactMatcher(), inputs=Inputs(systems, human, ["p1", "p2", "p3"], [])
    )
    prefix = f"evaluations/{outcome.eval_id}"
    assert written.index(f"{prefix}/points.json") < written.index(f"{prefix}/report.json") == len(written) - 1
    assert outcome.uris["points_json"].endswith(f"{prefix}/points.json")
    stored = evidence.read(LocalStore(tmp_path), prefix, "the evaluation")
    assert stored["eval_id"] == outcome.eval_id and list(stored["papers"]) == ["p1", "p2", "p3"]
    assert (tmp_path / prefix / "points.json").stat().st_size < 4000  # compact: the toys hold ~40 points


def _compare(evaluated: tuple[dict[str, Any], dict[str, Any]], **fields: str) -> Any:
    report, points = evaluated
    request = evaluation_pb2.ComparePaperRequest(eval_id=EVAL_ID, **fields)
    return paper_comparison(request, report, points)


def test_comparison_defaults_and_hits(evaluated: tuple[dict[str, Any], dict[str, Any]]) -> None:
    result = _compare(evaluated)
    assert (result.paper_id, list(result.papers)) == ("p1", ["p1", "p2", "p3"])
    assert list(result.systems) == ["ft-0", "ft-2", "gpt"]
    assert [s.name for s in result.compared] == ["ft-0", "ft-2"]
    assert result.matcher == "exact test-1"
    ft0 = result.compared[0]
    # ft-0 on p1: a (hits human 0), d (hits human 4: the first unmatched "d"), x9 (none)
    assert [(p.text, p.hit, p.score) for p in ft0.points] == [("a", 0, 1.0), ("d", 4, 1.0), ("x9", -1, 0.0)]
    assert (ft0.hits, ft0.recall, ft0.precision) == (2, 2 / 8, 2 / 3)
    assert [s.name for s in _compare(evaluated, b="ft-0").compared] == ["ft-2", "ft-0"]
    assert [s.name for s in _compare(evaluated, a="gpt").compared] == ["gpt", "ft-0"]
    gpt = _compare(evaluated, paper_id="p2", a="gpt", b="ft-2").compared[0]
    assert [(p.text, p.aspect, p.hit) for p in gpt.points] == [("y", "", 1), ("z", "", 3), ("w", "", -1)]


def test_one_system_is_compared_alone_and_an_unscored_paper_has_no_numbers(
    evaluated: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    report, points = evaluated
    alone = {**report, "systems": report["systems"][:1]}
    assert [s.name for s in paper_comparison(
        evaluation_pb2.ComparePaperRequest(eval_id=EVAL_ID), alone, points
    ).compared] == ["ft-0"]  # fmt: skip
    # a judge that could not judge (ft-0, p1) leaves no per-paper entry: points shown, no hit, no numbers
    unjudged = json.loads(json.dumps(report))
    unjudged["systems"][0]["per_paper"] = [
        s for s in unjudged["systems"][0]["per_paper"] if s["paper_id"] != "p1"
    ]
    ft0 = paper_comparison(evaluation_pb2.ComparePaperRequest(eval_id=EVAL_ID), unjudged, points).compared[0]
    assert [p.hit for p in ft0.points] == [-1, -1, -1] and ft0.hits == 0
    assert not ft0.HasField("recall") and not ft0.HasField("precision")


@pytest.mark.parametrize(
    ("fields", "error", "words"),
    [
        ({"paper_id": "p9"}, NotFound, "its 3 papers: p1, p2, p3"),
        ({"a": "nope"}, NotFound, "its systems: ft-0, ft-2, gpt"),
        ({"b": "human"}, InvalidArgument, "is the human set"),
        ({"a": "gpt", "b": "gpt"}, InvalidArgument, "two different systems"),
    ],
)  # fmt: skip
def test_names_the_evaluation_does_not_hold_are_refused(evaluated, fields, error, words) -> None:
    with pytest.raises(error, match=words):
        _compare(evaluated, **fields)


def test_points_json_that_does_not_fit_is_a_failed_precondition(
    tmp_path: Path, evaluated: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    report, points = evaluated
    store = LocalStore(tmp_path)
    with pytest.raises(FailedPrecondition, match="run the evaluation again"):
        evidence.read(store, "evaluations/old", "evaluation old")
    store.put_bytes("evaluations/old/points.json", json.dumps({**points, "format": "other/9"}).encode())
    with pytest.raises(FailedPrecondition, match="format 'other/9'"):
        evidence.read(store, "evaluations/old", "evaluation old")
    shifted = json.loads(json.dumps(points))
    shifted["papers"]["p1"]["human"].pop()  # one human point fewer than the report scored against
    with pytest.raises(FailedPrecondition, match="do not belong together"):
        paper_comparison(evaluation_pb2.ComparePaperRequest(eval_id=EVAL_ID), report, shifted)
