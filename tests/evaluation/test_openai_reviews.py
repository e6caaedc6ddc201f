"""Baseline reviews through an OpenAI-compatible endpoint (here the engine's `/v1/chat/completions` with
a tiny model): records in the review service's batch format, their lineage, resuming, and failures."""

from __future__ import annotations

import hashlib
import json
import random
import re
import urllib.request
from pathlib import Path

import pytest

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.errors import NotFound
from reviewstack.common.prompt import PROMPT_VERSION
from reviewstack.common.review_format import parse, render
from reviewstack.evaluation.openai_reviews import generate_reviews
from reviewstack.evaluation.records import review_from_record
from reviewstack.review.cli import _record
from reviewstack.v1 import common_pb2, review_pb2

from ..conftest import engine_process, free_port
from ..refuser import paper_text

# one request at a time: the second of two concurrent reviews meets a 429 and must be retried
LIMITS = ("--max-input-tokens", "600", "--max-total-tokens", "1024", "--max-concurrent-requests", "1")
SYSTEM = "refuser-chat"


@pytest.fixture(scope="module")
def engine(refuser_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("engine") / "engine.log"
    with engine_process(refuser_model, log, *LIMITS) as url:
        yield url


@pytest.fixture
def papers(tmp_path) -> Path:
    folder = tmp_path / "papers"
    folder.mkdir()
    rng = random.Random(3)
    (folder / "paper-a.md").write_text(paper_text(rng))
    (folder / "paper-b.txt").write_text(paper_text(rng))
    (folder / "notes.json").write_text("{}")  # not a paper: ignored
    return folder


def _service_record() -> dict:
    """A record as `reviewstack review --batch` writes it, for its shape."""
    paper = common_pb2.Paper(file=common_pb2.PaperFile(filename="p.md", content=b"# P"))
    parameters = review_pb2.GenerationParameters(max_new_tokens=8, temperature=0.5, refusal_penalty=1, seed=3)
    lineage = review_pb2.ReviewLineage(model="m", prompt_version="v", parameters=parameters, backend="b")
    aspect = common_pb2.Aspect(name="n", items=["i"], empty=False)
    response = review_pb2.ReviewResponse(
        review=common_pb2.StructuredReview(aspects=[aspect], text="t"), lineage=lineage
    )
    return json.loads(_record(Path("p.md"), review_pb2.ReviewRequest(paper=paper), response, "s").to_json())


def _overloaded(engine: str) -> float:
    with urllib.request.urlopen(f"{engine}/metrics") as response:
        found = re.search(r"^tgi_request_overloaded_total (\S+)$", response.read().decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_reviews_are_service_records_with_lineage_and_a_rerun_skips_them(
    engine, refuser_model, papers, local_store
):
    calls: list[tuple[str, int, int, str]] = []
    options = {
        "concurrency": 2,
        "max_tokens": 200,
        "temperature": 0.0,
        "tokenizer": refuser_model,  # the served model's tokenizer cuts the paper, as for the review service
        "max_prompt_length": 512,
        "retries": 10,  # the engine takes one request at a time: the other waits in 429s and backoff
    }
    overloaded_before = _overloaded(engine)
    batch = generate_reviews(
        papers,
        SYSTEM,
        local_store,
        f"{engine}/v1",
        "reviewstack",
        progress=lambda *a: calls.append(a),
        **options,
    )
    assert sorted(batch.written) == ["paper-a", "paper-b"] and not batch.failed and not batch.skipped
    assert batch.papers == 2 and batch.location == local_store.uri_for(f"reviews/{SYSTEM}")
    assert _overloaded(engine) > overloaded_before  # a 429 was met, and retried through
    assert calls[0] == ("reviewing", 0, 2, "0 already in the store")
    assert [c[1:3] for c in calls[1:]] == [(1, 2), (2, 2)]

    service = _service_record()
    port = engine.rsplit(":", 1)[1]
    for path in sorted(p for p in papers.iterdir() if p.suffix != ".json"):
        data = local_store.get_bytes(f"reviews/{SYSTEM}/{path.stem}.json")
        record = json.loads(data)
        assert set(record) == set(service)
        assert set(record["review"]) == set(service["review"])
        assert set(record["lineage"]) >= set(service["lineage"])
        optional = {"refusal_penalty", "seed"}  # λ means nothing to an external endpoint; no seed was asked
        assert set(record["lineage"]["parameters"]) >= set(service["lineage"]["parameters"]) - optional
        assert (record["paper_id"], record["system"]) == (path.stem, SYSTEM)
        assert record["source"] == {
            "file": path.name,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        aspects = record["review"]["aspects"]
        assert [a["name"] for a in aspects] == [a.criterion for a in AspectSchema.SEVEN.aspects]
        assert all(set(a) == set(service["review"]["aspects"][0]) for a in aspects)
        parsed = parse(record["review"]["raw_text"], strict=False)
        assert record["review"]["text"] == render(parsed.aspects)
        assert [a["empty"] for a in aspects] == [k in parsed.empty_aspects for k in AspectSchema.SEVEN.keys]
        assert [a["missing"] for a in aspects] == [k in parsed.missing for k in AspectSchema.SEVEN.keys]
        assert 0 < record["generated_tokens"] <= 200 and record["prompt_tokens"] <= 512
        lineage = record["lineage"]
        assert lineage["model"] == "reviewstack" and lineage["served_model"] == str(refuser_model)
        assert lineage["prompt_version"] == PROMPT_VERSION and lineage["api"] == "openai-chat-completions"
        assert lineage["backend"] == f"{engine}/v1" and lineage["endpoint_host"] == f"127.0.0.1:{port}"
        assert lineage["parameters"] == {"max_new_tokens": 200, "temperature": 0.0, "top_p": 0.0}
        assert lineage["max_prompt_length"] == 512 and len(lineage["prompt_tokenizer"]["sha256"]) == 64
        review = review_from_record(data, path.stem, {})  # the evaluation's loader reads it as it is
        assert review.aspects == AspectSchema.SEVEN.keys
        assert review.missing_aspects == tuple(parsed.missing)
        assert set(review.empty_aspects) == set(parsed.refused_aspects)

    before = {k: local_store.get_bytes(k) for k in local_store.keys(f"reviews/{SYSTEM}")}
    again = generate_reviews(papers, SYSTEM, local_store, f"{engine}/v1", "reviewstack", **options)
    assert sorted(again.skipped) == ["paper-a", "paper-b"] and not again.written and not again.failed
    assert {k: local_store.get_bytes(k) for k in local_store.keys(f"reviews/{SYSTEM}")} == before


def test_a_paper_that_fails_is_reported_and_the_rest_go_on(engine, refuser_model, tmp_path, local_store):
    folder = tmp_path / "papers"
    folder.mkdir()
    (folder / "broken.txt").write_bytes(b"\xff\xfe not UTF-8")
    (folder / "long.md").write_text("# A long paper\n\n" + "We study graph networks at length. " * 200)
    (folder / "fine.md").write_text(paper_text(random.Random(5)))
    batch = generate_reviews(
        folder,
        SYSTEM,
        local_store,
        f"{engine}/v1",
        "reviewstack",
        max_tokens=20,
        tokenizer=refuser_model,
        max_prompt_length=2000,  # longer than the engine takes: it answers 422
        retries=1,
    )
    assert batch.written == ["fine"]
    reasons = {f.what: f.reason for f in batch.failed}
    assert set(reasons) == {"broken.txt", "long.md"}
    assert "not UTF-8" in reasons["broken.txt"]
    assert (
        "refused the request (HTTP 422)" in reasons["long.md"]
        and "less than 600 tokens" in reasons["long.md"]
    )


def test_errors_every_paper_would_meet_stop_the_batch(engine, refuser_model, papers, local_store):
    with pytest.raises(NotFound, match="usually ends in /v1"):
        generate_reviews(papers, SYSTEM, local_store, f"{engine}/v2", "m", tokenizer=refuser_model, retries=0)
    nobody = f"http://127.0.0.1:{free_port()}/v1"  # unreachable: each paper fails, after its retries
    batch = generate_reviews(papers, SYSTEM, local_store, nobody, "m", tokenizer=refuser_model, retries=1)
    assert not batch.written and all("cannot reach" in f.reason for f in batch.failed)
    assert len(batch.failed) == 2
