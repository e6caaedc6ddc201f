"""TGI's OpenAI-compatible Messages API on the engine, driven by the real `openai` client against an engine
process on loopback: the same answers as `/generate` on the chat-templated prompt, streamed or not."""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request

import openai
import pytest
from text_generation import Client

from reviewstack.common.prompt import Prompt, PromptBuilder
from reviewstack.common.review_format import parse
from reviewstack.common.tokenizer import load_tokenizer

from ..refuser import paper_text

NEW = 60
MODEL = "reviewstack"  # the engine serves one model whatever the name, as TGI does


@pytest.fixture(scope="module")
def engine(refuser_engine):
    """The session's shared engine (tests/conftest.py): 600 input tokens, 1024 in all."""
    return refuser_engine


@pytest.fixture(scope="module")
def client(engine) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{engine}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def prompts(refuser_model) -> list[Prompt]:
    builder = PromptBuilder(load_tokenizer(refuser_model), max_prompt_length=512)
    rng = random.Random(11)
    return [builder.build(paper_text(rng)) for _ in range(3)]


def _request(url: str, body: dict) -> urllib.request.Request:
    return urllib.request.Request(
        url, json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )


def _tgi(engine: str, prompt: Prompt, **parameters) -> str:
    headers = parameters.pop("headers", None)
    return Client(engine, headers=headers, timeout=60).generate(prompt.text, **parameters).generated_text


def test_chat_is_generate_on_the_chat_templated_prompt(engine, client, prompts):
    prompt = prompts[0]
    reply = client.chat.completions.create(
        model=MODEL, messages=prompt.messages, max_tokens=NEW, temperature=0
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert choice.message.content == _tgi(engine, prompt, max_new_tokens=NEW)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    usage = reply.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt.tokens, NEW)
    assert usage.total_tokens == prompt.tokens + NEW


def test_a_review_runs_to_its_end_of_turn(client, prompts):
    reply = client.chat.completions.create(
        model=MODEL, messages=prompts[1].messages, max_tokens=400, temperature=0
    )
    assert reply.choices[0].finish_reason == "stop"  # the model's <|eot_id|>, not the token limit
    assert reply.usage.completion_tokens < 400
    assert len(parse(reply.choices[0].message.content, strict=False).aspects) == 7


def test_stream_adds_up_to_the_completion_then_usage_then_done(engine, client, prompts):
    prompt = prompts[0]
    whole = client.chat.completions.create(
        model=MODEL, messages=prompt.messages, max_tokens=NEW, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=prompt.messages,
            max_tokens=NEW,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    with_choices = [c for c in chunks if c.choices]
    assert len(with_choices) == NEW and all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content for c in with_choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in with_choices] == [None] * (NEW - 1) + ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == NEW
    assert chunks[-1].usage.prompt_tokens == prompt.tokens
    body = {"model": MODEL, "messages": prompt.messages, "max_tokens": 3, "temperature": 0, "stream": True}
    with urllib.request.urlopen(_request(f"{engine}/v1/chat/completions", body), timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line.decode().rstrip("\n") for line in response if line.strip()]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert len(lines) == 4 and json.loads(lines[-2][6:])["usage"] is None  # no usage unless asked for


def test_stop_sequences_end_the_text_after_the_stop_streamed_or_not(client, prompts):
    messages = prompts[2].messages
    text = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=NEW, temperature=0)
    text = text.choices[0].message.content
    stop = text[12:16]
    expected = text[: text.find(stop) + len(stop)]  # TGI keeps the stop sequence in the text
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=NEW, temperature=0, stop=stop
    )
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.content == expected
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=NEW, temperature=0, stop=[stop], stream=True
    )
    assert "".join(c.choices[0].delta.content for c in stream if c.choices) == expected


def test_sampling_is_seeded(client, prompts):
    def sample(seed: int) -> str:
        reply = client.chat.completions.create(
            model=MODEL, messages=prompts[0].messages, max_tokens=30, temperature=1.5, top_p=0.95, seed=seed
        )
        return reply.choices[0].message.content

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(4)}) > 1
    top_p_off = client.chat.completions.create(  # OpenAI's "off" value, which TGI's validation refuses
        model=MODEL, messages=prompts[0].messages, max_tokens=3, top_p=1.0, seed=1
    )
    assert top_p_off.usage.completion_tokens == 3


def test_refusal_penalty_per_request_header(engine, client, prompts):
    prompt = prompts[1]

    def review(penalty: str | None) -> str:
        headers = {"X-Refusal-Penalty": penalty} if penalty else None
        reply = client.chat.completions.create(
            model=MODEL, messages=prompt.messages, max_tokens=300, temperature=0, extra_headers=headers
        )
        return reply.choices[0].message.content

    plain, penalised = review(None), review("3")
    headers = {"X-Refusal-Penalty": "3"}
    assert penalised == _tgi(engine, prompt, max_new_tokens=300, headers=headers)
    assert len(parse(penalised, strict=False).empty_aspects) < len(parse(plain, strict=False).empty_aspects)


@pytest.mark.parametrize(
    ("request_fields", "headers", "message"),
    [
        ({"messages": [{"role": "user", "content": "word " * 700}]}, {}, "`inputs` must have less than 600"),
        ({"max_tokens": 1020}, {}, "`inputs` tokens + `max_new_tokens` must be <= 1024"),
        ({"max_tokens": 0}, {}, "`max_new_tokens` must be strictly positive"),
        ({"temperature": -1}, {}, "`temperature` must be strictly positive"),
        ({"n": 2}, {}, "does not implement `n`"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, {}, "does not implement `tools`"),
        ({}, {"X-Refusal-Penalty": "11"}, "`X-Refusal-Penalty` must be >= 0 and <= 10.0"),
        ({"messages": []}, {}, "`messages` cannot be empty"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            {},
            "reads text only, not image_url",
        ),
    ],
)
def test_refused_requests_are_422_in_openais_error_shape(client, request_fields, headers, message):
    fields = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, **request_fields}
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(model=MODEL, extra_headers=headers, **fields)
    error = caught.value
    assert error.status_code == 422 and error.body["type"] == "validation"
    assert message in error.body["message"]


def test_a_malformed_body_is_422_in_openais_error_shape(engine):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": "many"}
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(_request(f"{engine}/v1/chat/completions", body), timeout=30)
    assert caught.value.code == 422
    error = json.loads(caught.value.read())["error"]
    assert error["type"] == "validation" and "body.max_tokens" in error["message"]


def test_models_lists_the_served_model(client, refuser_model):
    assert [m.id for m in client.models.list().data] == [str(refuser_model)]
