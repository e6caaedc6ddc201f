"""Random parameter objects against the engine's validation and the engine itself (hypothesis).

Values are drawn to break things: NaN, ±inf, subnormals, 1e±300, integers past 64 bits, negative ones,
booleans and strings where numbers belong, empty and long stop sequences. Two properties:

- whatever validation accepts, the sampler turns into a token with a finite log-probability (so no
  accepted value can reach the failure path);
- over real HTTP (an in-process engine on the tiny model behind the engine's own app and uvicorn), every
  such body gets 200 or a 422 that names what was wrong, never a 500, and the engine stays healthy and
  answers a normal request afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import math
import threading
import time
from collections.abc import Iterator

import pydantic
import pytest
import torch
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from reviewstack.common.tokenizer import load_tokenizer
from reviewstack.generation.engine import Engine
from reviewstack.generation.protocol import GenerateRequest, ValidationFailed, validate
from reviewstack.generation.runner import DecoderRunner
from reviewstack.generation.sampling import Choice, SamplingSettings, SlotSampler
from reviewstack.generation.server import ServerLimits, create_app

MAX_INPUT, MAX_TOTAL = 48, 64  # small, so that a valid request generates a few dozen tokens at most

_EXTREME_FLOATS = [
    0.0,
    -0.0,
    1e-300,
    5e-324,
    1e300,
    1.0,
    0.5,
    1 - 1e-16,
    2.0,
    -2.0,
    math.nan,
    math.inf,
    -math.inf,
]
_EXTREME_INTS = [0, 1, 2, -1, 5, 6, 2**31 - 1, 2**31, 2**63, 2**64 - 1, 2**64, -(2**63), 10**30]
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(_EXTREME_FLOATS), st.floats(0.01, 3.0)
)
INTS = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from(_EXTREME_INTS), st.integers(0, 8))
STOPS = st.lists(st.one_of(st.text(max_size=3), st.just("x" * 300)), max_size=6)
JUNK = st.one_of(st.none(), st.booleans(), FLOATS, INTS, st.text(max_size=4), st.lists(INTS, max_size=2))
KINDS = {"float": FLOATS, "int": INTS, "bool": st.booleans(), "stop": STOPS}
TGI_FIELDS = {
    "temperature": "float", "top_p": "float", "typical_p": "float", "repetition_penalty": "float",
    "frequency_penalty": "float", "top_k": "int", "seed": "int", "max_new_tokens": "int",
    "top_n_tokens": "int", "best_of": "int", "truncate": "int", "stop": "stop", "do_sample": "bool",
    "details": "bool", "decoder_input_details": "bool", "watermark": "bool",
}  # fmt: skip
CHAT_FIELDS = {
    "temperature": "float", "top_p": "float", "presence_penalty": "float", "frequency_penalty": "float",
    "seed": "int", "max_tokens": "int", "n": "int", "stop": "stop",
}  # fmt: skip


def _parameters(fields: dict[str, str]) -> st.SearchStrategy[dict]:
    """A few fields (a body with many is refused for one of them before another is even looked at); each
    of its own JSON type nine times in ten, so that most bodies parse and reach the rules, anything else
    the tenth."""

    def entry(name: str) -> st.SearchStrategy[tuple[str, object]]:
        return st.tuples(st.just(name), st.one_of(*[KINDS[fields[name]]] * 9, JUNK))

    entries = st.sampled_from(sorted(fields)).flatmap(entry)
    return st.lists(entries, max_size=4, unique_by=lambda e: e[0]).map(dict)


TGI_PARAMETERS = _parameters(TGI_FIELDS)
CHAT_PARAMETERS = _parameters(CHAT_FIELDS)
FAST = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@given(parameters=TGI_PARAMETERS)
@settings(FAST, max_examples=400)
def test_what_validation_accepts_the_sampler_turns_into_a_token(parameters):
    body = json.loads(json.dumps({"inputs": "Hello", "parameters": parameters}))  # NaN travels as NaN
    try:
        request = validate(
            GenerateRequest.model_validate(body),
            [11, 12, 13],
            max_input_tokens=MAX_INPUT,
            max_total_tokens=MAX_TOTAL,
            refusal_penalty=0.0,
        )
    except (pydantic.ValidationError, ValidationFailed) as refused:
        assert "`" in str(refused) or "validation error" in str(refused)  # it names what was wrong
        return
    sampling = request.sampling
    assert request.input_ids and 1 <= request.max_new_tokens <= MAX_TOTAL - len(request.input_ids)
    for value in (sampling.temperature, sampling.top_p, sampling.repetition_penalty):
        assert math.isfinite(value) and value > 0
    assert 0 <= sampling.top_n_tokens <= 5 and 0 <= sampling.top_k < 2**31
    sampler = SlotSampler(2, 512, torch.device("cpu"))
    sampler.start(0, dataclasses.replace(sampling, seed=sampling.seed or 0), [1, 5, 9, 301])
    sampler.start(1, SamplingSettings(), [1, 5, 9])
    logits = torch.randn(2, 512, generator=torch.Generator().manual_seed(0)) * 30
    logits[:, 300:] = 0.0  # rows a tiny model never learned: exact ties, zeros for the penalty
    choices = sampler.choose([0, 1], logits)
    assert all(isinstance(c, Choice) and math.isfinite(c.logprob) for c in choices), choices


# -- the same over HTTP, against an engine --------------------------------------------------------------
@pytest.fixture(scope="module")
def server(refuser_model) -> Iterator[str]:
    """The engine's own app on uvicorn in a thread, over an in-process engine on the tiny model."""
    tokenizer = load_tokenizer(refuser_model).tokenizer
    model = AutoModelForCausalLM.from_pretrained(refuser_model).eval()
    engine = Engine(DecoderRunner(model, max_batch=2, max_total_tokens=MAX_TOTAL), tokenizer)
    limits = ServerLimits(
        str(refuser_model),
        "float32",
        "cpu",
        MAX_INPUT,
        MAX_TOTAL,
        8,
        2,
        refusal_penalty=0.0,
        refusal_penalty_max=10.0,
    )
    engine.start()
    with _serving(create_app(engine, limits)) as port:
        yield port
    engine.stop()


@contextlib.contextmanager
def _serving(app: object) -> Iterator[int]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


def _post(port: int, path: str, body: dict) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _healthy(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    finally:
        connection.close()


def _assert_answered(status: int, payload: bytes) -> None:
    """200, or a 422 whose message names the field or the malformed part; a stream carries no error."""
    assert status in (200, 422), (status, payload[:500])
    if status == 422:
        error = json.loads(payload)["error"]
        message = error["message"] if isinstance(error, dict) else error
        assert "`" in message or "malformed request: body" in message, message
    else:
        assert b'"error"' not in payload, payload[:500]


ROUTES = st.sampled_from(["/generate", "/", "/generate_stream"])


@given(parameters=TGI_PARAMETERS, route=ROUTES)
@settings(FAST, max_examples=100)
def test_random_tgi_bodies_get_an_answer_and_leave_the_engine_serving(server, parameters, route):
    parameters = {"max_new_tokens": 3, **parameters}  # bounded work when the draw leaves it out
    status, payload = _post(server, route, {"inputs": "Hello there", "parameters": parameters})
    _assert_answered(status, payload)
    assert _healthy(server)


@given(parameters=CHAT_PARAMETERS, stream=st.booleans())
@settings(FAST, max_examples=50)
def test_random_chat_bodies_get_an_answer_and_leave_the_engine_serving(server, parameters, stream):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, **parameters, "stream": stream}
    status, payload = _post(server, "/v1/chat/completions", body)
    _assert_answered(status, payload)
    assert _healthy(server)


def test_after_the_random_bodies_a_normal_request_is_served(server):
    status, payload = _post(server, "/generate", {"inputs": "Hello", "parameters": {"max_new_tokens": 4}})
    assert status == 200 and json.loads(payload)["generated_text"]
    assert _healthy(server)
