"""The Review service's own checks, and its backend as a real process that requires a token, dies and comes
back: parameters and papers refused before any backend call, artifacts only from inside the store,
health answered while a large paper is prepared, the engine's bearer token sent (and re-read when it
rotates), and a backend killed during a review reported as UNAVAILABLE, with a review succeeding once the
backend is back on the same port."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reviewstack.v1 import common_pb2, review_pb2, review_pb2_grpc

from ..conftest import EngineChild, free_port, service_process, start_engine, stop_engine
from ..refuser import paper_text

SERVICE = "reviewstack.v1.Review"
PAPER = paper_text(random.Random(11))
ENGINE_FLAGS = ("--max-input-tokens", "600", "--max-total-tokens", "1024", "--max-batch-size", "4")


def _env(refuser_model: Path, backend: str, store: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "REVIEWSTACK_BACKEND_URL": backend,
        "REVIEWSTACK_TOKENIZER": str(refuser_model),
        "REVIEWSTACK_MAX_PROMPT_LENGTH": "512",
        "REVIEWSTACK_MAX_NEW_TOKENS": "450",
        "REVIEWSTACK_STORE": str(store),
        "REVIEWSTACK_BACKEND_RETRIES": "1",
        **extra,
    }


def _request(paper: common_pb2.Paper | None = None, **parameters: object) -> review_pb2.ReviewRequest:
    return review_pb2.ReviewRequest(
        paper=paper or common_pb2.Paper(text=PAPER), parameters=review_pb2.GenerationParameters(**parameters)
    )


def _refused(stub: review_pb2_grpc.ReviewStub, request: review_pb2.ReviewRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        stub.Review(request, timeout=60)
    return error.value


# -- checks that come before any backend call (the backend here is not running) -------------------------
@pytest.fixture(scope="module")
def offline(refuser_model, tmp_path_factory):
    """A Review service whose backend is down, with small paper limits: whatever it answers other than
    UNAVAILABLE was decided before it called the backend."""
    tmp = tmp_path_factory.mktemp("offline")
    env = _env(
        refuser_model,
        f"http://127.0.0.1:{free_port()}",
        tmp / "store",
        REVIEWSTACK_MAX_PAPER_BYTES=str(64 * 1024),
        REVIEWSTACK_MAX_PAPER_CHARS="50000",
    )
    with service_process("reviewstack-review", SERVICE, env, tmp / "log") as target:
        channel = grpc.insecure_channel(target)
        yield review_pb2_grpc.ReviewStub(channel), tmp
        channel.close()


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"temperature": math.nan}, "parameters.temperature must be a finite number"),
        ({"temperature": math.inf}, "parameters.temperature must be a finite number"),
        ({"top_p": -math.inf}, "parameters.top_p must be a finite number"),
        ({"seed": -3}, "parameters.seed must be >= 0"),
        ({"refusal_penalty": math.nan}, "parameters.refusal_penalty must be a finite number"),
        ({"repetition_penalty": math.inf}, "parameters.repetition_penalty must be a finite number"),
    ],
)
def test_parameters_out_of_tgis_rules_are_refused_before_the_backend_is_called(offline, parameters, message):
    error = _refused(offline[0], _request(**parameters))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details()


def test_an_artifact_outside_the_store_is_permission_denied(offline):
    stub, tmp = offline
    elsewhere = tmp / "store2" / "papers"  # shares the store's path as a prefix: "…/store" + "2/…"
    elsewhere.mkdir(parents=True)
    (elsewhere / "p.md").write_text(PAPER)
    for uri in (f"file://{elsewhere / 'p.md'}", str(elsewhere / "p.md"), "s3://another-bucket/papers/p.md"):
        error = _refused(stub, _request(common_pb2.Paper(artifact=common_pb2.ArtifactRef(uri=uri))))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (uri, error.details())
        assert "outside what this service may read" in error.details()


def test_papers_over_the_size_limits_are_refused_before_they_are_decoded(offline):
    stub, tmp = offline
    (tmp / "store" / "papers").mkdir(parents=True, exist_ok=True)
    (tmp / "store" / "papers" / "big.md").write_text(PAPER + "\n\n" + "More results. " * 10_000)
    artifact = common_pb2.Paper(artifact=common_pb2.ArtifactRef(uri="papers/big.md"))
    error = _refused(stub, _request(artifact))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is larger than this service reads (65,536 bytes, REVIEWSTACK_MAX_PAPER_BYTES)" in error.details()
    file = common_pb2.Paper(file=common_pb2.PaperFile(filename="big.md", content=b"x" * 70_000))
    error = _refused(stub, _request(file))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "is 70,000 bytes" in error.details()
    error = _refused(stub, _request(common_pb2.Paper(text="word " * 12_000)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "60,000 characters" in error.details() and "REVIEWSTACK_MAX_PAPER_CHARS" in error.details()


# -- a real engine that requires a token, behind the service ---------------------------------------------
class Backend:
    """The engine process behind the service: stopped, killed and started again on its port."""

    def __init__(self, model: Path, folder: Path) -> None:
        self.model, self.folder = model, folder
        self.token_file = folder / "engine-token"
        self.token_file.write_text("first-token")
        self.log = folder / "engine.log"
        self.port = free_port()
        self.child: EngineChild | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "REVIEWSTACK_AUTH_TOKEN_FILE": str(self.token_file)}
        self.child = start_engine(self.model, self.log, *ENGINE_FLAGS, port=self.port, env=env)

    def kill(self) -> None:
        assert self.child is not None
        self.child.process.send_signal(signal.SIGKILL)
        self.child.process.wait(timeout=30)

    def requests_received(self) -> float:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as reply:  # open: no token
            found = re.search(r"^tgi_request_count_total (\S+)$", reply.read().decode(), re.MULTILINE)
        return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def backend(refuser_model, tmp_path_factory):
    backend = Backend(refuser_model, tmp_path_factory.mktemp("backend"))
    backend.start()
    yield backend
    if backend.child is not None:
        stop_engine(backend.child, backend.log)


@pytest.fixture(scope="module")
def review(refuser_model, backend, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("review")
    token_file = tmp / "backend-token"
    token_file.write_text("first-token")
    env = _env(refuser_model, backend.url, tmp / "store", REVIEWSTACK_BACKEND_AUTH_TOKEN_FILE=str(token_file))
    with service_process("reviewstack-review", SERVICE, env, tmp / "log") as target:
        channel = grpc.insecure_channel(target)
        yield review_pb2_grpc.ReviewStub(channel), channel, token_file
        channel.close()


def _http(url: str, token: str | None = None, body: dict | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=60) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_engine_requires_its_token_and_the_service_sends_it_as_it_rotates(backend, review):
    stub, _, review_token = review
    generate = {"inputs": "Hello", "parameters": {"max_new_tokens": 2}}
    assert _http(f"{backend.url}/health")[0] == 200 and _http(f"{backend.url}/metrics")[0] == 200  # probes
    status, text = _http(f"{backend.url}/generate", body=generate)
    assert status == 401 and "requires a bearer token" in json.loads(text)["error"]
    assert _http(f"{backend.url}/generate", "wrong", generate)[0] == 401
    assert _http(f"{backend.url}/info")[0] == 401
    assert _http(f"{backend.url}/generate", "first-token", generate)[0] == 200
    assert stub.Review(_request(max_new_tokens=10), timeout=120).generated_tokens == 10

    backend.token_file.write_text("second-token-rotated")  # the Secret rotates on the engine first
    assert _http(f"{backend.url}/generate", "first-token", generate)[0] == 401
    error = _refused(stub, _request(max_new_tokens=10))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "REVIEWSTACK_BACKEND_AUTH_TOKEN" in error.details() and "invalid bearer token" in error.details()
    review_token.write_text("second-token-rotated")  # then on the service: no restart of either
    assert stub.Review(_request(max_new_tokens=10), timeout=120).generated_tokens == 10
    backend.token_file.write_text("first-token")
    review_token.write_text("first-token")


def test_health_answers_while_a_large_paper_is_prepared(review):
    """~1.9 M characters (under gRPC's 4 MiB and the 2 M-character limit): cleaning and tokenizing them
    takes seconds, in a worker thread, while the health service keeps answering at once."""
    stub, channel, _ = review
    health = health_pb2_grpc.HealthStub(channel)
    large = PAPER + "\n\n" + "More results follow in this section, with numbers 1.2 and 3.4. " * 29_000
    started = time.monotonic()
    call = stub.Review.future(_request(common_pb2.Paper(text=large), max_new_tokens=8), timeout=120)
    slowest = 0.0
    while not call.done():
        asked = time.monotonic()
        reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
        slowest = max(slowest, time.monotonic() - asked)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        time.sleep(0.05)
    took = time.monotonic() - started
    response = call.result()
    assert any("truncated" in w for w in response.warnings) and response.generated_tokens == 8
    assert took > 1.0, f"the paper took {took:.2f} s: too little to tell a blocked loop from a free one"
    # on the event loop, one check would wait for (nearly) all of it
    assert slowest < took / 3, f"a health check waited {slowest:.2f} s while the paper took {took:.2f} s"


def _wait_until_generating(backend: Backend, before: float) -> None:
    deadline = time.monotonic() + 60
    while backend.requests_received() <= before:
        assert time.monotonic() < deadline, "the review never reached the backend"
        time.sleep(0.02)


def test_a_backend_killed_during_a_review_is_unavailable_until_it_is_back(backend, review):
    stub, _, _ = review
    # sampling at a high temperature writes the full 450 tokens: seconds of work to be killed in
    long = {"max_new_tokens": 450, "temperature": 50.0, "seed": 1}
    before = backend.requests_received()
    call = stub.Review.future(_request(**long), timeout=120)
    _wait_until_generating(backend, before)
    backend.kill()
    with pytest.raises(grpc.RpcError) as error:
        call.result()
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    details = error.value.details()
    assert backend.url in details and "check that it runs" in details, details

    backend.start()  # the same port, as a restarted pod behind its Service
    chunks = stub.StreamReview(_request(**long), timeout=120)
    next(chunks)  # the stream has begun: tokens are on their way to the caller
    backend.kill()
    with pytest.raises(grpc.RpcError) as error:
        for _ in chunks:
            pass
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    details = error.value.details()
    assert backend.url in details and "a stream cannot be resumed" in details, details

    backend.start()
    assert stub.Review(_request(max_new_tokens=10), timeout=120).generated_tokens == 10


def test_the_service_refuses_to_start_without_its_backend_token_file(refuser_model, tmp_path):
    """A missing Secret is a deployment error the service names at start, instead of 401s later."""
    env = _env(
        refuser_model,
        "http://127.0.0.1:9",
        tmp_path / "store",
        REVIEWSTACK_BACKEND_AUTH_TOKEN_FILE=str(tmp_path / "missing"),
    )
    command = [str(Path(sys.executable).with_name("reviewstack-review")), "--port", str(free_port())]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "cannot read the auth token file" in result.stdout + result.stderr
