"""The engine over HTTP, driven by the real `text-generation` client (TGI's), as a process of its own."""

from __future__ import annotations

import asyncio
import functools
import json
import random
import urllib.request

import pytest
import torch
from text_generation import AsyncClient, Client
from text_generation.errors import OverloadedError, ValidationError
from transformers import AutoModelForCausalLM, LogitsProcessorList

from reviewstack.common.prompt import PromptBuilder
from reviewstack.common.review_format import parse
from reviewstack.common.tokenizer import load_tokenizer
from reviewstack.penalty.hf import RefusalPenaltyLogitsProcessor

from ..refuser import paper_text

NEW = 80


@pytest.fixture(scope="module")
def engine(refuser_engine):
    """The session's shared engine (tests/conftest.py): 600 input tokens, 1024 in all, 4 slots, 6 requests
    in flight (`test_info_health_and_metrics` checks them)."""
    return refuser_engine


@pytest.fixture(scope="module")
def prompts(refuser_model) -> list[str]:
    builder = PromptBuilder(load_tokenizer(refuser_model), max_prompt_length=512)
    rng = random.Random(7)
    return [builder.build(paper_text(rng)).text for _ in range(4)]


@pytest.fixture(scope="module")
def reference(refuser_model):
    """transformers' greedy `generate`, with the penalty's logits processor: what the engine must write."""
    tokenizer = load_tokenizer(refuser_model).tokenizer
    model = AutoModelForCausalLM.from_pretrained(refuser_model)
    table = RefusalPenaltyLogitsProcessor.from_tokenizer(tokenizer, 0).table

    @functools.cache  # several tests compare against the same prompt's answer
    def generate(prompt: str, penalty: float = 0.0, new: int = NEW) -> str:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        processors = LogitsProcessorList([RefusalPenaltyLogitsProcessor(table, penalty)])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=new, do_sample=False, logits_processor=processors)
        return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    return generate


def test_generate_matches_transformers_greedy(engine, prompts, reference):
    response = Client(engine, timeout=60).generate(prompts[0], max_new_tokens=NEW)
    assert response.generated_text == reference(prompts[0])
    assert response.details.generated_tokens == NEW and response.details.finish_reason == "length"
    assert all(t.logprob is not None and t.logprob <= 0 for t in response.details.tokens)


def test_stream_sends_every_token_then_the_whole_text(engine, prompts, reference):
    events = list(Client(engine, timeout=60).generate_stream(prompts[1], max_new_tokens=NEW))
    assert len(events) == NEW
    assert all(e.details is None and e.generated_text is None for e in events[:-1])
    assert events[-1].details.generated_tokens == NEW
    assert events[-1].generated_text == "".join(e.token.text for e in events) == reference(prompts[1])


def test_concurrent_requests_are_batched_without_changing_any_answer(engine, prompts, reference):
    async def all_at_once() -> list[str]:
        client = AsyncClient(engine, timeout=120)
        replies = await asyncio.gather(*(client.generate(p, max_new_tokens=NEW) for p in prompts))
        return [r.generated_text for r in replies]

    assert asyncio.run(all_at_once()) == [reference(p) for p in prompts]


def test_refusal_penalty_per_request_header(engine, prompts, reference):
    plain = Client(engine, timeout=60).generate(prompts[2], max_new_tokens=300).generated_text
    client = Client(engine, headers={"X-Refusal-Penalty": "3"}, timeout=60)
    penalised = client.generate(prompts[2], max_new_tokens=300).generated_text
    assert penalised == reference(prompts[2], 3.0, 300)
    assert len(parse(penalised, strict=False).empty_aspects) < len(parse(plain, strict=False).empty_aspects)
    with pytest.raises(ValidationError, match=r"X-Refusal-Penalty` must be >= 0 and <= 10\.0"):
        Client(engine, headers={"X-Refusal-Penalty": "11"}).generate(prompts[2], max_new_tokens=4)


def test_inputs_over_the_limits_get_tgis_validation_errors(engine):
    long_text = "word " * 700
    with pytest.raises(ValidationError, match=r"`inputs` must have less than 600 tokens\. Given: 70\d"):
        Client(engine).generate(long_text, max_new_tokens=4)
    with pytest.raises(ValidationError, match=r"`inputs` tokens \+ `max_new_tokens` must be <= 1024"):
        Client(engine).generate("word " * 500, max_new_tokens=600)
    reply = Client(engine).generate(long_text, max_new_tokens=2, truncate=500)  # TGI keeps the tail
    assert reply.details.generated_tokens == 2


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"watermark": True}, "does not implement `watermark`"),
        ({"temperature": 0}, "`temperature` must be strictly positive"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"max_new_tokens": "many"}, "malformed request: body.parameters.max_new_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "up to 4 stop sequences"),
    ],
)
def test_bad_parameters_are_422_with_a_message(engine, parameters, message):
    status, body = _post(f"{engine}/generate", {"inputs": "Hello", "parameters": parameters})
    assert status == 422 and body["error_type"] == "validation" and message in body["error"]


def test_sampling_is_seeded_and_reported(engine, prompts):
    client = Client(engine, timeout=60)
    first = client.generate(prompts[0], max_new_tokens=20, do_sample=True, temperature=1.5, seed=11)
    again = client.generate(prompts[0], max_new_tokens=20, do_sample=True, temperature=1.5, seed=11)
    assert first.generated_text == again.generated_text and first.details.seed == 11
    unseeded = client.generate(prompts[0], max_new_tokens=5, do_sample=True, top_k=5)
    assert unseeded.details.seed is not None


def test_stop_sequences_end_the_text_after_the_stop(engine, prompts, reference):
    text = reference(prompts[0])
    stop = text[10:14]
    reply = Client(engine, timeout=60).generate(prompts[0], max_new_tokens=NEW, stop_sequences=[stop])
    assert reply.details.finish_reason == "stop_sequence"
    assert reply.generated_text == text[: text.find(stop) + len(stop)]


def test_overload_is_429_and_never_a_hang(engine, prompts):
    async def flood() -> list[object]:
        client = AsyncClient(engine, timeout=120)
        calls = [client.generate(prompts[i % 4], max_new_tokens=200) for i in range(12)]
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(asyncio.wait_for(flood(), timeout=300))
    refused = [o for o in outcomes if isinstance(o, OverloadedError)]
    served = [o for o in outcomes if not isinstance(o, BaseException)]
    assert refused and served and len(refused) + len(served) == 12  # at most 6 in flight were accepted
    assert Client(engine, timeout=60).generate(prompts[0], max_new_tokens=3).details.generated_tokens == 3


def test_a_client_that_leaves_mid_stream_frees_its_slot(engine, prompts):
    for _ in range(6):  # more than the 4 slots: each abandoned request must give its slot back
        stream = Client(engine, timeout=60).generate_stream(prompts[3], max_new_tokens=400)
        next(stream)
        stream.close()
    reply = Client(engine, timeout=60).generate(prompts[3], max_new_tokens=5)
    assert reply.details.generated_tokens == 5


def test_info_health_and_metrics(engine):
    with urllib.request.urlopen(f"{engine}/info") as response:
        info = json.loads(response.read())
    assert info["max_input_tokens"] == 600 and info["max_total_tokens"] == 1024
    assert (info["max_batch_size"], info["max_concurrent_requests"]) == (4, 6)  # the slot and overload tests
    assert info["refusal_penalty"] == {"default": 0.0, "max": 10.0, "header": "X-Refusal-Penalty"}
    with urllib.request.urlopen(f"{engine}/health") as response:
        assert response.status == 200
    with urllib.request.urlopen(f"{engine}/metrics") as response:
        text = response.read().decode()
    assert "tgi_request_count_total" in text and "tgi_batch_forward_duration_decode_bucket" in text
