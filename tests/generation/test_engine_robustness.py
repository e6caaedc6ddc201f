"""The engine keeps serving whatever one request does: a failure fails what it belongs to (one request, or
the requests of one decode step), the slots come back, and the engine is unhealthy only while its model
cannot compute. An in-process engine on the tiny refusing model, driven with requests that really fail
(ids outside the vocabulary, a position past the cache, a NaN temperature that skipped validation, NaN
weights), not with stand-ins."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from reviewstack.common.tokenizer import load_tokenizer
from reviewstack.generation.engine import EndEvent, Engine, ErrorEvent, Finished, Request
from reviewstack.generation.runner import DecoderRunner
from reviewstack.generation.sampling import SamplingSettings

CACHE = 96  # tokens per slot: a request that outgrows it fails in a decode step


@pytest.fixture(scope="module")
def model(refuser_model):
    return AutoModelForCausalLM.from_pretrained(refuser_model).eval()


@pytest.fixture
def engine(model, refuser_model):
    tokenizer = load_tokenizer(refuser_model).tokenizer
    runner = DecoderRunner(model, max_batch=3, max_total_tokens=CACHE)
    engine = Engine(runner, tokenizer, probe_interval_s=0.2)
    engine.start()
    yield engine
    engine.stop()


def _prompt(engine: Engine) -> list[int]:
    return engine.tokenizer.encode("A study of graph networks. We study them.", add_special_tokens=False)


async def _outcome(engine: Engine, request: Request) -> tuple[str, Any]:
    """("end", Finished) or ("error", message)."""
    handle = engine.submit(request, asyncio.get_running_loop())
    while True:
        event = await asyncio.wait_for(handle.events.get(), timeout=60)
        if isinstance(event, ErrorEvent):
            return "error", event.message
        if isinstance(event, EndEvent):
            return "end", event.finished


def _run(engine: Engine, *requests: Request) -> list[tuple[str, Any]]:
    async def together() -> list[tuple[str, Any]]:
        return await asyncio.gather(*(_outcome(engine, r) for r in requests))

    return asyncio.run(together())


def _normal(engine: Engine, new: int = 6) -> Request:
    return Request(_prompt(engine), new, SamplingSettings())


def _assert_serving(engine: Engine) -> None:
    [(kind, finished)] = _run(engine, _normal(engine))
    assert kind == "end" and isinstance(finished, Finished) and finished.generated_tokens == 6
    assert engine.alive and engine.problem is None
    assert engine._in_flight == 0 and not engine._running  # every slot and count came back


def test_a_request_that_fails_in_prefill_fails_alone(engine):
    vocabulary = engine.runner.shape.vocab
    bad = Request([*_prompt(engine), vocabulary + 7], 6, SamplingSettings())  # an id the model has no row for
    outcomes = _run(engine, _normal(engine), bad, _normal(engine))
    assert [kind for kind, _ in outcomes] == ["end", "error", "end"]
    assert "generation failed in prefill" in outcomes[1][1] and "index" in outcomes[1][1].lower()
    _assert_serving(engine)


def test_a_row_that_cannot_be_sampled_fails_alone(engine):
    """A temperature validation would refuse, handed to the engine directly: its row fails in sampling,
    the greedy rows of the same decode steps keep their tokens."""
    broken = Request(_prompt(engine), 6, SamplingSettings(do_sample=True, temperature=float("nan"), seed=1))
    outcomes = _run(engine, _normal(engine, 20), broken, _normal(engine, 20))
    assert [kind for kind, _ in outcomes] == ["end", "error", "end"]
    assert "sampling failed" in outcomes[1][1]
    assert outcomes[0][1].generated_text == outcomes[2][1].generated_text  # the same prompt, greedy
    _assert_serving(engine)


def test_a_failed_decode_step_fails_its_requests_and_the_engine_goes_on(engine):
    """A request asking for more tokens than its slot holds (validation would have refused it) breaks the
    batch's forward: nothing in that step can be blamed alone, so the step's requests fail, no more."""
    too_long = Request(_prompt(engine), CACHE * 2, SamplingSettings())
    outcomes = _run(engine, too_long, _normal(engine, CACHE * 2))
    assert [kind for kind, _ in outcomes] == ["error", "error"]
    assert all("generation failed in a decode step" in message for _, message in outcomes)
    _assert_serving(engine)


def test_extreme_valid_values_sample_without_failing(engine):
    """Values TGI's rules accept, at their extremes: no request may fail."""
    prompt = _prompt(engine)
    extremes = [
        SamplingSettings(do_sample=True, temperature=1e-300, seed=0),
        SamplingSettings(do_sample=True, temperature=5e-324, top_p=1e-300, top_k=2**31 - 1, seed=2**64 - 1),
        SamplingSettings(do_sample=True, temperature=1e300, top_p=0.999999999, seed=3),
        SamplingSettings(repetition_penalty=1e300, top_n_tokens=5),
        SamplingSettings(do_sample=True, repetition_penalty=5e-324, temperature=1e-30, seed=4),
    ]
    outcomes = _run(engine, *(Request(prompt, 4, sampling) for sampling in extremes))
    assert [kind for kind, _ in outcomes] == ["end"] * len(extremes), outcomes
    assert all(t.logprob is not None and t.logprob <= 0 for _, f in outcomes for t in f.tokens)
    _assert_serving(engine)


def test_a_model_that_computes_nan_is_unhealthy_until_it_computes_again(engine, model):
    """The health question is put to the model itself: with NaN weights every request fails and the
    engine reports why; with its weights back, the next probe finds it working without a restart."""
    weights = model.lm_head.weight
    saved = weights.detach().clone()
    try:
        with torch.no_grad():
            weights.fill_(float("nan"))
        [(kind, message)] = _run(engine, _normal(engine))
        assert kind == "error" and "non-finite logits" in message
        assert not engine.alive and "the model is unusable" in engine.problem
    finally:
        with torch.no_grad():
            weights.copy_(saved)
    deadline = time.monotonic() + 10
    while not engine.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    _assert_serving(engine)
