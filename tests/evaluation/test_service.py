"""The Evaluation service end to end: a real server process on loopback (auth on), the real default
matcher, batch-output systems and a ground-truth dataset in a store; the CLI locally and through the
server; the errors a user gets for requests they must fix; ComparePaper reading a finished evaluation back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from reviewstack.common.grpc import make_channel, wait_operation
from reviewstack.common.store import open_store
from reviewstack.v1 import evaluation_pb2, evaluation_pb2_grpc, operations_pb2

from ..conftest import service_process
from .test_sources import _truth_row, publish_dataset, record

TOKEN = "evaluation-test-token"
SERVICE = "reviewstack.v1.Evaluation"
REVIEWSTACK = str(Path(sys.executable).with_name("reviewstack"))

TRUTH = [
    _truth_row(
        "p1",
        "test",
        [
            ("R1", "The method is not compared with strong recent baselines.", "rejection"),
            ("R1", "The writing is clear and easy to follow.", "acceptance"),
            ("R2", "An ablation of the loss terms is missing.", "experiments"),
            ("R2", "The idea of learning the schedule is novel.", "idea"),
            ("R3", "Results on larger datasets would strengthen the claims.", "suggestions"),
        ],
        ["R1", "R2", "R3"],
    ),
    _truth_row(
        "p2",
        "test",
        [
            ("R1", "The theoretical analysis assumes convexity, which rarely holds.", "rejection"),
            ("R2", "Experiments cover only two small benchmarks.", "experiments"),
            ("R2", "The paper is well motivated.", "acceptance"),
        ],
        ["R1", "R2"],
    ),
]
OURS = {
    "p1": {
        "rejection": ["The paper does not compare against strong recent baselines."],
        "experiments": ["There is no ablation of the individual loss terms."],
        "other": ["The color palette of the figures is pleasant."],
    },
    "p2": {"experiments": ["Only two small benchmarks are used in the experiments."]},
}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evaluation-store")
    store = open_store(str(root))
    publish_dataset(store, TRUTH)
    for system, penalty in (("ours", 0.0), ("ours-l2", 2.0)):
        for paper, aspects in OURS.items():
            kept = aspects if penalty == 0 else {**aspects, "idea": ["The schedule idea is new."]}
            store.put_bytes(
                f"reviews/{system}/{paper}.json", record(paper, kept, penalty=penalty, system=system)
            )
    return root


@pytest.fixture(scope="module")
def server(store_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    judges = {"judge": {"url": "http://127.0.0.1:9/v1", "model": "judge-70b"}}
    env = {
        **os.environ,
        "REVIEWSTACK_STORE": str(store_dir),
        "REVIEWSTACK_AUTH_TOKEN": TOKEN,
        "REVIEWSTACK_LLM_ENDPOINTS": json.dumps(judges),
        "REVIEWSTACK_MAX_BOOTSTRAP": "5000",
        "REVIEWSTACK_MAX_SYSTEMS": "4",
    }
    log = tmp_path_factory.mktemp("evaluation-log") / "server.log"
    with service_process("reviewstack-evaluation", SERVICE, env, log) as target:
        yield target


def _evaluate(
    target: str, request: evaluation_pb2.EvaluateRequest, token: str = TOKEN
) -> evaluation_pb2.EvaluationResult:
    """Run one evaluation through the service and wait for it; its result."""
    with make_channel(target, token) as channel:
        operation = evaluation_pb2_grpc.EvaluationStub(channel).Evaluate(request, timeout=60)
        final = wait_operation(channel, operation.id, timeout=300)
    assert final.state == operations_pb2.OPERATION_STATE_SUCCEEDED, final.error.message
    result = evaluation_pb2.EvaluationResult()
    final.result.Unpack(result)
    return result


def test_evaluate_writes_the_report_and_returns_the_headline(server: str, store_dir: Path) -> None:
    request = evaluation_pb2.EvaluateRequest(
        systems=[evaluation_pb2.SystemRef(name="ours", uri="reviews/ours")],
        human="datasets/gt/v1",
        bootstrap=100,
        request_id="first",
    )
    result = _evaluate(server, request)
    assert result.papers == 2
    names = [s.name for s in result.systems]
    assert names[0] == "ours" and len(names) == 2  # the human leave-one-out comes last
    ours = result.systems[0]
    # 3 of the 4 generated points restate a human point; the figures' colours match nothing
    assert 0 < ours.recall < 1 and ours.precision >= 0.5 and ours.papers == 2
    store = open_store(str(store_dir))
    prefix = f"evaluations/{result.eval_id}"
    report = json.loads(store.get_bytes(f"{prefix}/report.json"))
    assert report["matcher"]["name"] == "embedded" and report["request"]["systems"][0]["name"] == "ours"
    assert report["matcher"]["agreement"]["protocol"].startswith("leave-one-method-out")
    assert b"<html" in store.get_bytes(f"{prefix}/report.html")[:200].lower()
    assert result.report_html.endswith(f"{prefix}/report.html")
    # a retried request (same id) is the same operation, not a second evaluation
    with make_channel(server, TOKEN) as channel:
        stub = evaluation_pb2_grpc.EvaluationStub(channel)
        first, again = stub.Evaluate(request, timeout=60), stub.Evaluate(request, timeout=60)
    assert first.id == again.id


def test_compare_reports_the_pairwise_comparison(server: str, store_dir: Path) -> None:
    with make_channel(server, TOKEN) as channel:
        operation = evaluation_pb2_grpc.EvaluationStub(channel).Compare(
            evaluation_pb2.CompareRequest(
                a=evaluation_pb2.SystemRef(name="λ=0", uri="reviews/ours"),
                b=evaluation_pb2.SystemRef(name="λ=2", uri="reviews/ours-l2"),
                human="datasets/gt/v1",
            ),
            timeout=60,
        )
        final = wait_operation(channel, operation.id, timeout=300)
    assert final.state == operations_pb2.OPERATION_STATE_SUCCEEDED, final.error.message
    result = evaluation_pb2.EvaluationResult()
    final.result.Unpack(result)
    report = json.loads(open_store(str(store_dir)).get_bytes(f"evaluations/{result.eval_id}/report.json"))
    (pair,) = [p for p in report["pairwise"] if p["frame"] == "all human points"]
    assert (pair["a"], pair["b"]) == ("λ=0", "λ=2")
    assert pair["hits"]["wins"] + pair["hits"]["ties"] + pair["hits"]["losses"] == 2
    assert [s["refusal_penalty"] for s in report["penalty_sweeps"][0]["points"]] == [0.0, 2.0]


@pytest.mark.parametrize(
    ("systems", "human", "matcher", "code", "words"),
    [
        ([("nope", "reviews/nope")], "datasets/gt/v1", "", grpc.StatusCode.NOT_FOUND, "nope"),
        ([("ours", "reviews/ours")], "datasets/none/v9", "", grpc.StatusCode.NOT_FOUND, "datasets/none/v9"),
        ([("ours", "reviews/ours")], "datasets/gt/v1", "llm", grpc.StatusCode.INVALID_ARGUMENT, "the judge"),
        ([("a", "reviews/ours")] * 2, "datasets/gt/v1", "", grpc.StatusCode.INVALID_ARGUMENT, "distinct"),
        ([], "datasets/gt/v1", "", grpc.StatusCode.INVALID_ARGUMENT, "systems"),
    ],
)  # fmt: skip
def test_requests_a_user_must_fix_fail_on_the_call(server, systems, human, matcher, code, words) -> None:
    request = evaluation_pb2.EvaluateRequest(
        systems=[evaluation_pb2.SystemRef(name=n, uri=u) for n, u in systems], human=human, matcher=matcher
    )
    with make_channel(server, TOKEN) as channel, pytest.raises(grpc.RpcError) as caught:
        evaluation_pb2_grpc.EvaluationStub(channel).Evaluate(request, timeout=60)
    assert caught.value.code() == code
    assert words in caught.value.details()


def test_without_the_token_the_call_is_refused(server: str) -> None:
    with make_channel(server, None) as channel, pytest.raises(grpc.RpcError) as caught:
        evaluation_pb2_grpc.EvaluationStub(channel).Evaluate(evaluation_pb2.EvaluateRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [REVIEWSTACK, "eval", *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )


def test_cli_runs_locally_and_through_the_server_alike(server: str, store_dir: Path) -> None:
    args = ["--system", f"ours={store_dir}/reviews/ours", "--human", f"{store_dir}/datasets/gt/v1"]
    local = _cli("run", *args, "--out", str(store_dir), "--bootstrap", "100", "--json")
    assert local.returncode == 0, local.stderr
    remote = _cli(
        "run", *args, "--out", str(store_dir), "--bootstrap", "100", "--json", "--server", server,
        REVIEWSTACK_TOKEN=TOKEN,
    )  # fmt: skip
    assert remote.returncode == 0, remote.stderr
    local_summary, remote_summary = json.loads(local.stdout), json.loads(remote.stdout)
    assert [s["name"] for s in local_summary["systems"]] == [s["name"] for s in remote_summary["systems"]]
    assert local_summary["systems"][0]["recall"] == pytest.approx(remote_summary["systems"][0]["recall"])
    assert Path(local_summary["report_html"].removeprefix("file://")).is_file()
    table = _cli("run", *args, "--out", str(store_dir), "--bootstrap", "0")
    assert table.returncode == 0 and "report:" in table.stdout and "ours" in table.stdout


def test_cli_errors_are_one_line_a_user_can_act_on(store_dir: Path) -> None:
    wrong = _cli("run", "--system", "ours", "--human", "x", "--out", str(store_dir))
    assert wrong.returncode == 2 and "NAME=URI" in wrong.stderr and "Traceback" not in wrong.stderr


def test_cli_match_pairs_two_lists(tmp_path: Path) -> None:
    generated, reference = tmp_path / "generated.json", tmp_path / "reference.json"
    generated.write_text(json.dumps(["No ablation of the loss terms is given.", "Figures use nice colours."]))
    reference.write_text(json.dumps(["Bananas are yellow.", "An ablation of the loss terms is missing."]))
    result = _cli("match", "--generated", str(generated), "--reference", str(reference), "--json")
    assert result.returncode == 0, result.stderr
    assert [(m["generated"], m["reference"]) for m in json.loads(result.stdout)] == [(0, 1)]
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    refused = _cli("match", "--generated", str(bad), "--reference", str(reference))
    assert refused.returncode == 2 and "list of strings" in refused.stderr


# -- what a request may point the server at, and how much work it may ask for -----------------------
@pytest.mark.parametrize(
    ("field", "value", "code", "words"),
    [
        ("system", "/etc", grpc.StatusCode.PERMISSION_DENIED, "system 'ours' '/etc' is outside"),
        ("system", "s3://another-bucket/reviews/ours", grpc.StatusCode.PERMISSION_DENIED, "outside"),
        ("system", "../../../etc", grpc.StatusCode.PERMISSION_DENIED, "outside"),
        ("system", "reviews/../../etc", grpc.StatusCode.INVALID_ARGUMENT, "'..' segment"),
        ("human", "/usr/share", grpc.StatusCode.PERMISSION_DENIED, "human"),
        ("output", "/tmp/elsewhere", grpc.StatusCode.PERMISSION_DENIED, "output"),
        ("output", "s3://another-bucket/x", grpc.StatusCode.PERMISSION_DENIED, "output"),
        ("bootstrap", 5001, grpc.StatusCode.INVALID_ARGUMENT, "bootstrap must be within [0, 5000]"),
        ("bootstrap", -1, grpc.StatusCode.INVALID_ARGUMENT, "bootstrap"),
        ("systems", 5, grpc.StatusCode.INVALID_ARGUMENT, "at most 4"),
        ("judge", "http://169.254.169.254/v1", grpc.StatusCode.INVALID_ARGUMENT, "looks like a URL"),
        ("judge", "mine", grpc.StatusCode.NOT_FOUND, "configured: judge"),
    ],
)  # fmt: skip
def test_a_request_stays_inside_the_store_and_its_limits(server, store_dir, field, value, code, words):
    request = evaluation_pb2.EvaluateRequest(
        systems=[evaluation_pb2.SystemRef(name="ours", uri="reviews/ours")], human="datasets/gt/v1"
    )
    if field == "system":
        request.systems[0].uri = value
    elif field == "systems":
        del request.systems[:]
        request.systems.extend(
            evaluation_pb2.SystemRef(name=f"s{i}", uri="reviews/ours") for i in range(value)
        )
    elif field == "judge":
        request.matcher = "llm"
        request.judge.endpoint = value
    else:
        setattr(request, field, value)
    before = sorted(p.relative_to(store_dir) for p in store_dir.rglob("*"))
    with make_channel(server, TOKEN) as channel, pytest.raises(grpc.RpcError) as caught:
        evaluation_pb2_grpc.EvaluationStub(channel).Evaluate(request, timeout=60)
    assert caught.value.code() == code, caught.value.details()
    assert words in caught.value.details()
    assert not Path("/tmp/elsewhere").exists()
    assert sorted(p.relative_to(store_dir) for p in store_dir.rglob("*")) == before


# -- ComparePaper: a finished evaluation read back, one paper and two systems at a time --------------------
@pytest.fixture(scope="module")
def compared(server: str, store_dir: Path) -> tuple[str, dict[str, Any]]:
    """An evaluation of ours and ours-l2 through the server, and its report.json."""
    result = _evaluate(
        server,
        evaluation_pb2.EvaluateRequest(
            systems=[
                evaluation_pb2.SystemRef(name="ours", uri="reviews/ours"),
                evaluation_pb2.SystemRef(name="ours-l2", uri="reviews/ours-l2"),
            ],
            human="datasets/gt/v1",
            bootstrap=10,
        ),
    )
    report = json.loads(open_store(str(store_dir)).get_bytes(f"evaluations/{result.eval_id}/report.json"))
    return result.eval_id, report


def _compare_paper(target: str, **fields: str) -> evaluation_pb2.PaperComparison:
    with make_channel(target, TOKEN) as channel:
        stub = evaluation_pb2_grpc.EvaluationStub(channel)
        return stub.ComparePaper(evaluation_pb2.ComparePaperRequest(**fields), timeout=30)


def test_compare_paper_shows_the_points_and_the_hits_of_the_report(server, compared) -> None:
    eval_id, report = compared
    matched = 0
    for truth in TRUTH:
        paper = truth["paper_id"]
        result = _compare_paper(server, eval_id=eval_id, paper_id=paper, a="ours-l2", b="ours")
        assert result.paper_id == paper and [s.name for s in result.compared] == ["ours-l2", "ours"]
        # the ground truth's points, reviewer by reviewer: the order the report's match indices refer to
        assert [(p.reviewer, p.text, p.aspect) for p in result.human] == [
            (q["reviewer_id"], q["text"], q["aspect"]) for q in truth["points"]
        ]
        for system in result.compared:
            written = (
                {**OURS[paper], "idea": ["The schedule idea is new."]}
                if system.name == "ours-l2"
                else OURS[paper]
            )
            assert sorted((p.aspect, p.text) for p in system.points) == sorted(
                (aspect, text) for aspect, texts in written.items() for text in texts
            )
            entry = next(s for s in report["systems"] if s["name"] == system.name)
            scored = next(s for s in entry["per_paper"] if s["paper_id"] == paper)
            hits = [(i, p.hit, p.score) for i, p in enumerate(system.points) if p.hit >= 0]
            assert [(g, r) for g, r, _ in sorted(scored["matches"])] == [(g, r) for g, r, _ in hits]
            assert [s for _, _, s in sorted(scored["matches"])] == pytest.approx(
                [s for _, _, s in hits], abs=1e-4
            )
            assert all(p.score == 0 for p in system.points if p.hit < 0)
            assert system.hits == scored["hits"] and system.recall == pytest.approx(scored["recall"])
            assert system.precision == pytest.approx(scored["precision"])
            assert "experiments" not in system.empty_aspects and "prior_work" in system.empty_aspects
            matched += len(hits)
            if paper == "p1":  # a hit names the human point it restates
                (ablation,) = [p for p in system.points if "ablation" in p.text]
                assert result.human[ablation.hit].text == "An ablation of the loss terms is missing."
    assert matched >= 4


def test_compare_paper_defaults_to_the_first_paper_and_systems(server, compared) -> None:
    eval_id, report = compared
    result = _compare_paper(server, eval_id=eval_id)
    assert (result.eval_id, result.paper_id) == (eval_id, report["papers"][0])
    assert list(result.papers) == report["papers"] == ["p1", "p2"]
    assert list(result.systems) == ["ours", "ours-l2"] == [s.name for s in result.compared]
    assert result.matcher == f"{report['matcher']['name']} {report['matcher']['version']}"
    # an empty one of the two is the first system the other does not name
    for named in ({"a": "ours-l2"}, {"b": "ours"}):
        assert [s.name for s in _compare_paper(server, eval_id=eval_id, **named).compared] == [
            "ours-l2",
            "ours",
        ]


INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"eval_id": "../x"}, INVALID, "is not an evaluation id"),
        ({"eval_id": "20260101-000000-abcd1234/../x"}, INVALID, "is not an evaluation id"),
        ({"eval_id": "1" * 100_000}, INVALID, "is not an evaluation id"),
        ({"eval_id": ""}, INVALID, "eval_id is empty"),
        ({"eval_id": "20990101-000000-deadbeef"}, NOT_FOUND, "no evaluation 20990101-000000-deadbeef in"),
        ({"paper_id": "p9"}, NOT_FOUND, "its 2 papers: p1, p2"),
        ({"paper_id": "p" * 513}, INVALID, "at most 512"),
        ({"a": "nope"}, NOT_FOUND, "its systems: ours, ours-l2"),
        ({"b": "x" * 100_000}, INVALID, "at most 512"),
        ({"b": "human"}, INVALID, "is the human set"),
        ({"a": "ours", "b": "ours"}, INVALID, "two different systems"),
    ],
)  # fmt: skip
def test_compare_paper_refuses_what_a_user_must_fix(server, compared, fields, code, words) -> None:
    eval_id, _ = compared
    with pytest.raises(grpc.RpcError) as caught:
        _compare_paper(server, **{"eval_id": eval_id, **fields})
    assert caught.value.code() == code, caught.value.details()
    assert words in caught.value.details() and len(caught.value.details()) < 400
    assert _compare_paper(server, eval_id=eval_id).compared  # and the server goes on serving


def test_compare_paper_needs_a_complete_evaluation_with_its_points(server, compared, store_dir) -> None:
    eval_id, _ = compared
    store = open_store(str(store_dir))
    old, unfinished = "20000101-000000-0000000a", "20000101-000000-0000000b"
    # written before points.json existed: a report alone; still being written: points, no report yet
    store.put_bytes(f"evaluations/{old}/report.json", store.get_bytes(f"evaluations/{eval_id}/report.json"))
    store.put_bytes(
        f"evaluations/{unfinished}/points.json", store.get_bytes(f"evaluations/{eval_id}/points.json")
    )
    for which, words in ((old, "run the evaluation again"), (unfinished, "has not finished")):
        with pytest.raises(grpc.RpcError) as caught:
            _compare_paper(server, eval_id=which)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
        assert which in caught.value.details() and words in caught.value.details()
