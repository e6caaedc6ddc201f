"""The Review service end to end: a real engine on the tiny refusing model behind it, real gRPC."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.review_format import parse
from reviewstack.v1 import common_pb2, review_pb2, review_pb2_grpc

from ..conftest import free_port, service_process
from ..refuser import paper_text

SERVICE = "reviewstack.v1.Review"


def _env(refuser_model, backend: str, tmp_path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "REVIEWSTACK_BACKEND_URL": backend,
        "REVIEWSTACK_TOKENIZER": str(refuser_model),
        "REVIEWSTACK_MAX_PROMPT_LENGTH": "512",
        "REVIEWSTACK_MAX_NEW_TOKENS": "450",
        "REVIEWSTACK_STORE": str(tmp_path / "store"),
        "REVIEWSTACK_BACKEND_RETRIES": "1",
        **extra,
    }


@pytest.fixture(scope="module")
def engine(refuser_engine):
    """The session's shared engine (tests/conftest.py): 600 input tokens, 1024 in all, 4 slots."""
    return refuser_engine


@pytest.fixture(scope="module")
def review(refuser_model, engine, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("review")
    with service_process(
        "reviewstack-review", SERVICE, _env(refuser_model, engine, tmp), tmp / "log"
    ) as target:
        channel = grpc.insecure_channel(target)
        yield review_pb2_grpc.ReviewStub(channel), tmp
        channel.close()


def _request(text: str, **parameters) -> review_pb2.ReviewRequest:
    return review_pb2.ReviewRequest(
        paper=common_pb2.Paper(text=text), parameters=review_pb2.GenerationParameters(**parameters)
    )


PAPER = paper_text(random.Random(11))


def test_review_returns_seven_structured_aspects_with_lineage(review, engine, refuser_model):
    stub, _ = review
    reply = stub.Review(_request(PAPER), timeout=120)
    names = [a.name for a in reply.review.aspects]
    assert names == [a.criterion for a in AspectSchema.SEVEN.aspects]
    assert sum(a.empty for a in reply.review.aspects) >= 5  # the model refuses almost everywhere
    assert parse(reply.review.text).aspects  # the text is the format's own rendering: strict parse
    assert reply.lineage.prompt_version == "reviewer-v1" and reply.lineage.backend == engine
    assert reply.lineage.model == str(refuser_model)  # no served_model set: the backend's own id
    assert reply.lineage.parameters.refusal_penalty == 0 and reply.lineage.parameters.max_new_tokens == 450
    assert 0 < reply.prompt_tokens <= 512 and reply.generated_tokens > 0
    assert not any(a.missing for a in reply.review.aspects)  # it ended its turn: every aspect was written
    assert not any("max_new_tokens" in w for w in reply.warnings)


def test_a_review_cut_at_max_new_tokens_marks_the_unwritten_aspects_missing_not_declined(review):
    stub, _ = review
    reply = stub.Review(_request(PAPER, max_new_tokens=40), timeout=120)
    assert reply.generated_tokens == 40
    missing = [a.missing for a in reply.review.aspects]
    # the text reaches some aspects and not the rest, in order
    assert missing[0] is False and missing[-1] is True and missing == sorted(missing)
    assert all(a.empty for a in reply.review.aspects if a.missing)  # no points, but not declined
    assert any("max_new_tokens (40)" in w for w in reply.warnings)
    assert any("never written" in w for w in reply.warnings)


def test_refusal_penalty_per_request_cuts_empty_aspects(review):
    stub, _ = review
    plain = stub.Review(_request(PAPER), timeout=120)
    penalised = stub.Review(_request(PAPER, refusal_penalty=3.0), timeout=120)
    assert sum(a.empty for a in penalised.review.aspects) < sum(a.empty for a in plain.review.aspects)
    assert penalised.lineage.parameters.refusal_penalty == 3.0


def test_a_review_that_runs_on_past_the_last_aspect_ends_there(review):
    """The tiny model writes 7 aspects whatever it is asked: asked for the 4-aspect schema it runs on, and
    the stop sequence ends the text at the 5th heading's number instead of at the token limit."""
    stub, _ = review
    request = _request(PAPER)
    request.schema = common_pb2.ASPECT_SCHEMA_FOUR
    reply = stub.Review(request, timeout=120)
    assert reply.raw_text.endswith("\n\n5.") and "\n\n6." not in reply.raw_text
    assert reply.generated_tokens < 450
    assert len(reply.review.aspects) == 4
    assert not any("5." in item for aspect in reply.review.aspects for item in aspect.items)


def test_repetition_penalty_per_request_reaches_the_backend_and_the_lineage(review):
    """The tiny model repeats "<No related terms>" in every aspect: a repetition penalty must change what
    it writes, and the lineage must say which penalty wrote it."""
    stub, _ = review
    plain = stub.Review(_request(PAPER, max_new_tokens=120), timeout=120)
    penalised = stub.Review(_request(PAPER, max_new_tokens=120, repetition_penalty=1.5), timeout=120)
    assert penalised.raw_text != plain.raw_text
    assert plain.lineage.parameters.repetition_penalty == 1.0
    assert penalised.lineage.parameters.repetition_penalty == 1.5


def test_stream_sends_text_then_the_structured_review(review):
    stub, _ = review
    chunks = list(stub.StreamReview(_request(PAPER, max_new_tokens=120), timeout=120))
    assert len(chunks) > 10 and chunks[-1].HasField("final")
    text = "".join(c.text for c in chunks)
    final = chunks[-1].final
    assert final.generated_tokens == 120
    assert [a.items for a in final.review.aspects][:2] == [
        list(items) for items in list(parse(text, strict=False).aspects.values())[:2]
    ]


def test_long_paper_is_truncated_with_a_warning(review):
    stub, _ = review
    reply = stub.Review(
        _request(PAPER + "\n\n" + "More results follow. " * 400, max_new_tokens=8), timeout=120
    )
    assert any("truncated" in w for w in reply.warnings) and reply.prompt_tokens <= 512


def test_paper_as_file_bytes_and_as_artifact(review):
    stub, tmp = review
    as_file = common_pb2.Paper(file=common_pb2.PaperFile(filename="p.md", content=PAPER.encode()))
    reply = stub.Review(
        review_pb2.ReviewRequest(paper=as_file, parameters={"max_new_tokens": 8}), timeout=120
    )
    assert reply.generated_tokens == 8
    (tmp / "store" / "papers").mkdir(parents=True)
    (tmp / "store" / "papers" / "p.md").write_text(PAPER)
    ref = common_pb2.ArtifactRef(uri=f"file://{tmp / 'store' / 'papers' / 'p.md'}")
    as_ref = review_pb2.ReviewRequest(paper=common_pb2.Paper(artifact=ref), parameters={"max_new_tokens": 8})
    assert stub.Review(as_ref, timeout=120).prompt_tokens == reply.prompt_tokens


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (review_pb2.ReviewRequest(), "no content"),
        (_request("   "), "empty"),
        (_request(PAPER, refusal_penalty=11.0), "refusal_penalty must be within [0, 10.0]"),
        (_request(PAPER, max_new_tokens=5000), "max_new_tokens must be within [1, 450]"),
        (_request(PAPER, repetition_penalty=0.0), "repetition_penalty must be within (0, 3.0]"),
        (
            review_pb2.ReviewRequest(
                paper=common_pb2.Paper(file=common_pb2.PaperFile(filename="p.docx", content=b"x"))
            ),
            ".md, .markdown, .txt, .pdf",
        ),
    ],
)
def test_bad_requests_are_invalid_argument(review, request_, message):
    stub, _ = review
    with pytest.raises(grpc.RpcError) as error:
        stub.Review(request_, timeout=60)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()


def test_backend_down_is_unavailable_after_bounded_retries(refuser_model, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    with service_process(
        "reviewstack-review", SERVICE, _env(refuser_model, dead, tmp_path), tmp_path / "log"
    ) as target:
        stub = review_pb2_grpc.ReviewStub(grpc.insecure_channel(target))
        with pytest.raises(grpc.RpcError) as error:
            stub.Review(_request(PAPER), timeout=60)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "unreachable after 2 tries" in error.value.details()


def test_overload_is_resource_exhausted_not_a_hang(refuser_model, engine, tmp_path):
    env = _env(refuser_model, engine, tmp_path, REVIEWSTACK_MAX_IN_FLIGHT="1")
    with service_process("reviewstack-review", SERVICE, env, tmp_path / "log") as target:

        async def three_at_once() -> list[object]:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = review_pb2_grpc.ReviewStub(channel)
                calls = [stub.Review(_request(PAPER, max_new_tokens=200), timeout=120) for _ in range(3)]
                return await asyncio.gather(*calls, return_exceptions=True)

        outcomes = asyncio.run(three_at_once())
    codes = [o.code() for o in outcomes if isinstance(o, grpc.RpcError)]
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert any(isinstance(o, review_pb2.ReviewResponse) for o in outcomes)


def test_the_readme_python_client_gets_a_review_with_auth_on(refuser_model, engine, tmp_path):
    """The README's 10-line client, as written, against a server that requires the token."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("**Asking for a review from Python**", 1)[1]
    client = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "paper.md").write_text(paper_text(random.Random(7)))
    env = _env(refuser_model, engine, tmp_path, REVIEWSTACK_AUTH_TOKEN="readme-token")
    with service_process("reviewstack-review", SERVICE, env, tmp_path / "log") as target:
        run = {**os.environ, "REVIEW": target, "REVIEWSTACK_TOKEN": "readme-token"}
        result = subprocess.run(
            [sys.executable, "-c", client], cwd=tmp_path, env=run, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-2000:]
        printed = result.stdout.splitlines()
        names = [line for line in printed if not line.startswith("  - ")]
        assert names == [a.criterion for a in AspectSchema.SEVEN.aspects]
        wrong = subprocess.run(
            [sys.executable, "-c", client], cwd=tmp_path, env={**run, "REVIEWSTACK_TOKEN": "wrong"},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert wrong.returncode != 0 and "UNAUTHENTICATED" in wrong.stderr


def test_the_cli_sets_its_own_deadline_on_a_server(refuser_model, engine, tmp_path):
    """A review takes longer than a server's default deadline for calls that set none (here 0.2 s, in a
    deployment 60 s against minutes on a CPU backend): `reviewstack review --server` sets its own."""
    papers = tmp_path / "papers"
    papers.mkdir()
    for i in range(2):
        (papers / f"p{i}.md").write_text(paper_text(random.Random(i)))
    env = _env(
        refuser_model,
        engine,
        tmp_path,
        REVIEWSTACK_DEFAULT_DEADLINE_S="0.2",
        REVIEWSTACK_SERVED_MODEL="s3://reviewstack/runs/r1/merged",
    )
    with service_process("reviewstack-review", SERVICE, env, tmp_path / "log") as target:
        command = [
            str(Path(sys.executable).with_name("reviewstack")), "review", "--batch", str(papers),
            "--server", target, "--store", str(tmp_path / "store"), "--system", "deadline",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    records = sorted((tmp_path / "store" / "reviews" / "deadline").glob("*.json"))
    assert [p.name for p in records] == ["p0.json", "p1.json"]
    # the lineage names the run the deployment says it serves, not the engine's model directory
    assert {json.loads(p.read_text())["lineage"]["model"] for p in records} == {
        "s3://reviewstack/runs/r1/merged"
    }
