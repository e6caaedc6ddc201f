"""The engine process under a burst of malformed requests mixed with normal ones, over real HTTP: every
normal request is served, every malformed one gets its 4xx with a message, and the engine stays healthy.
Against the session's shared engine (tests/conftest.py: 600 input tokens, 1024 in all, 6 in flight)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from reviewstack.common.prompt import PromptBuilder
from reviewstack.common.tokenizer import load_tokenizer

from ..refuser import paper_text

PAYLOAD_LIMIT = 2_000_000  # the engine's default (REVIEWSTACK_PAYLOAD_LIMIT)
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def engine(refuser_engine):
    return refuser_engine


@pytest.fixture(scope="module")
def prompt(refuser_model) -> str:
    return (
        PromptBuilder(load_tokenizer(refuser_model), max_prompt_length=512)
        .build(paper_text(random.Random(3)))
        .text
    )


@dataclass
class Call:
    """One request of the burst and the status (and words of the message) it must get."""

    path: str
    body: bytes | None
    status: int
    says: str = ""
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    chunked: bool = False


def _json(inputs: str, **parameters: object) -> bytes:
    return json.dumps({"inputs": inputs, "parameters": parameters}).encode()


def _penalty(value: str) -> dict[str, str]:
    """A λ header the engine must refuse."""
    return {**JSON, "X-Refusal-Penalty": value}


def _malformed() -> list[Call]:
    nan = b'{"inputs": "Hello", "parameters": {"temperature": NaN, "do_sample": true}}'
    huge = b'{"inputs": "Hello", "parameters": {"seed": 1' + b"0" * 40 + b"}}"
    oversize = _json("word " * (PAYLOAD_LIMIT // 5 + 10), max_new_tokens=4)
    return [
        Call("/generate", b'{"inputs": "Hello", "parameters": {', 422, "JSON decode error"),
        Call("/generate", b"[1, 2, 3]", 422, "malformed request"),
        Call("/generate", _json("Hello", max_new_tokens="many"), 422, "parameters.max_new_tokens"),
        Call("/generate", _json("Hello", do_sample="yes"), 422, "parameters.do_sample"),
        Call("/generate", nan, 422, "`temperature` must be a finite number"),
        Call("/", b'{"inputs": "Hello", "parameters": {"top_p": Infinity}}', 422, "`top_p` must be a finite"),
        Call("/generate_stream", huge, 422, "`seed` must be >= 0"),
        Call("/generate", _json("Hello", seed=-1), 422, "`seed` must be >= 0"),
        Call("/generate", _json("Hello", top_n_tokens=-1), 422, "`top_n_tokens` must be >= 0 and <= 5"),
        Call("/generate", _json("Hello", top_k=2**40), 422, "`top_k` must be strictly positive and at most"),
        Call("/generate", _json("Hello", temperature=1e999), 422, "`temperature` must be a finite number"),
        Call("/generate", _json("Hello", repetition_penalty=0), 422, "`repetition_penalty` must be strictly"),
        Call("/generate", _json("Hello", stop=[""]), 422, "`stop` sequences must be non-empty"),
        Call("/generate", _json("Hello", stop=["x" * 1000]), 422, "`stop` sequences must be at most 256"),
        Call("/generate", _json("Hello", truncate=0), 422, "`truncate` must be strictly positive"),
        Call("/generate", _json("Hello", max_new_tokens=10**12), 422, "`max_new_tokens` must be strictly"),
        Call("/generate", _json("Hello", max_new_tokens=5000), 422, "`max_new_tokens` must be <= 1024"),
        Call("/generate", _json("", max_new_tokens=4), 422, "`inputs` cannot be empty"),
        Call("/generate", _json("Hello", typical_p=0.5), 422, "does not implement `typical_p`"),
        Call("/generate", _json("Hello"), 422, "Penalty` must be a number", headers=_penalty("lots")),
        Call("/generate", _json("Hello"), 422, "Penalty` must be >= 0 and <= 10", headers=_penalty("nan")),
        Call("/generate", _json("Hello"), 422, "Penalty` must be >= 0 and <= 10", headers=_penalty("-1")),
        Call("/generate", _json("Hello"), 422, "Penalty` must be >= 0 and <= 10", headers=_penalty("1e999")),
        Call("/generate", oversize, 413, "past this engine's limit of 2000000 bytes"),
        Call("/generate", oversize, 413, "the request body goes on", chunked=True),
        Call(
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}',
            422,
            "`temperature` must be a finite number",
        ),
        Call("/v1/chat/completions", b'{"messages": [{"role": "user", "content": 5}]}', 422, "body.messages"),
        Call("/no/such/route", b"{}", 404),
        Call("/generate", None, 405, method="GET"),
    ]  # fmt: skip


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 1 << 16):
        yield body[start : start + (1 << 16)]


async def _send(session: aiohttp.ClientSession, url: str, call: Call) -> tuple[int, str]:
    data = _chunks(call.body) if call.chunked and call.body else call.body
    async with session.request(call.method, url + call.path, data=data, headers=call.headers) as reply:
        return reply.status, await reply.text()


def _message(text: str) -> str:
    error = json.loads(text).get("error", "")
    return error["message"] if isinstance(error, dict) else error


def test_a_burst_of_malformed_requests_among_normal_ones(engine, prompt):
    normal = [Call("/generate", _json(prompt, max_new_tokens=12), 200) for _ in range(3)]
    normal.append(Call("/generate_stream", _json(prompt, max_new_tokens=12), 200))
    normal.append(
        Call(
            "/v1/chat/completions",
            json.dumps({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 12}).encode(),
            200,
        )
    )
    malformed = _malformed()
    calls = [*malformed, *normal, *malformed]  # the normal ones land in the middle of the burst
    random.Random(0).shuffle(calls)

    async def burst() -> list[tuple[int, str]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            return await asyncio.gather(*(_send(session, engine, call) for call in calls))

    outcomes = asyncio.run(burst())
    for call, (status, text) in zip(calls, outcomes, strict=True):
        assert status == call.status, (call.path, call.body[:120] if call.body else None, status, text[:300])
        if call.status == 200 and call.path == "/generate_stream":
            assert '"generated_text":' in text and '"error"' not in text
        elif call.status == 200:
            assert "error" not in json.loads(text)
        elif call.says:
            assert call.says in _message(text), (call.says, text[:300])

    async def after() -> tuple[int, int, str]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{engine}/health") as health:
                status = health.status
            code, text = await _send(session, engine, Call("/generate", _json(prompt, max_new_tokens=4), 200))
            return status, code, text

    health, code, text = asyncio.run(after())
    assert health == 200 and code == 200 and json.loads(text)["generated_text"]


def test_an_error_under_v1_is_in_openais_shape_and_elsewhere_in_tgis(engine):
    async def both() -> list[tuple[int, str]]:
        oversize = _json("x" * (PAYLOAD_LIMIT + 1))
        async with aiohttp.ClientSession() as session:
            return [
                await _send(session, engine, Call("/v1/chat/completions", oversize, 413)),
                await _send(session, engine, Call("/generate", oversize, 413)),
            ]

    (chat_status, chat), (tgi_status, tgi) = asyncio.run(both())
    assert chat_status == tgi_status == 413
    assert json.loads(chat)["error"]["type"] == "validation"
    assert json.loads(tgi)["error_type"] == "validation"


def test_outside_the_chart_the_engine_listens_on_loopback(monkeypatch, tmp_path):
    from reviewstack.generation.main import EngineSettings

    for name in [n for n in os.environ if n.startswith("REVIEWSTACK_")]:
        monkeypatch.delenv(name)
    settings = EngineSettings(_cli_parse_args=["--model", str(tmp_path)])
    assert settings.host == "127.0.0.1" and settings.payload_limit == PAYLOAD_LIMIT
    assert settings.auth_token is None and settings.auth_token_file is None


def test_an_unreadable_token_file_stops_the_engine_before_it_loads_anything(tmp_path):
    """A Secret that is not mounted must not turn into an engine without auth: exit 2, saying what to do."""
    command = [str(Path(sys.executable).with_name("reviewstack-generation")), "--model", str(tmp_path)]
    env = {**os.environ, "REVIEWSTACK_AUTH_TOKEN_FILE": str(tmp_path / "missing")}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot read the auth token file" in result.stdout + result.stderr
