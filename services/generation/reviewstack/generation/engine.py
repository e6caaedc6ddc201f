"""The engine loop: a queue of requests, one KV-cache slot each, continuous batching.

One thread owns the model. Each turn it admits waiting requests into free slots (prefill, one at a time,
at most `max_prefill_tokens` a turn so that running requests are not starved), then runs one decode step
for every running request, hands each its token, and frees the slots of finished ones. Requests talk to
the loop through thread-safe handles; the HTTP layer awaits their events on its own event loop.
"""

from __future__ import annotations

import asyncio
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from reviewstack.common.logging import get_logger
from reviewstack.generation import metrics
from reviewstack.generation.detokenize import IncrementalDetokenizer
from reviewstack.generation.runner import DecoderRunner
from reviewstack.generation.sampling import Choice, RowSampling, choose
from reviewstack.penalty.core import PenaltyTable, RowTracker

log = get_logger(__name__)


@dataclass
class TokenInfo:
    id: int
    text: str
    logprob: float | None
    special: bool


@dataclass
class Finished:
    """The end of a request: why it stopped and what it produced."""

    finish_reason: str  # "length" | "eos_token" | "stop_sequence"
    generated_text: str
    generated_tokens: int
    input_length: int
    seed: int | None
    prefill: list[TokenInfo]
    tokens: list[TokenInfo]
    top_tokens: list[list[TokenInfo]]


@dataclass
class Request:
    """A validated generation request, as the HTTP layer hands it to the engine."""

    input_ids: list[int]
    max_new_tokens: int
    sampling: RowSampling
    stop: list[str] = field(default_factory=list)
    decoder_input_details: bool = False


@dataclass
class _Running:
    request: Request
    handle: Handle
    slot: int = -1
    position: int = 0  # where the next token's key/value go
    last_token: int = 0
    generated: list[int] = field(default_factory=list)
    text: str = ""
    tokens: list[TokenInfo] = field(default_factory=list)
    top_tokens: list[list[TokenInfo]] = field(default_factory=list)
    prefill: list[TokenInfo] = field(default_factory=list)
    detokenizer: IncrementalDetokenizer | None = None
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float = 0.0


class Handle:
    """The HTTP side of one request: events arrive on its asyncio queue; `cancel` frees its slot."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancelled = threading.Event()

    def emit(self, kind: str, payload: Any) -> None:  # called from the engine thread
        self._loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))

    def cancel(self) -> None:
        self.cancelled.set()


class Overloaded(RuntimeError):
    """More requests are queued or running than the engine accepts."""


class Engine:
    def __init__(
        self,
        runner: DecoderRunner,
        tokenizer: Any,
        *,
        max_concurrent_requests: int = 128,
        max_prefill_tokens: int = 16_384,
        penalty_table: PenaltyTable | None = None,
    ) -> None:
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_concurrent_requests = max_concurrent_requests
        self.max_prefill_tokens = max_prefill_tokens
        self.penalty_table = penalty_table
        self.eos_ids = _eos_ids(runner.model, tokenizer)
        self.special_ids = set(tokenizer.all_special_ids)
        self._inbox: queue.SimpleQueue[_Running] = queue.SimpleQueue()
        self._waiting: deque[_Running] = deque()
        self._running: dict[int, _Running] = {}  # slot → request
        self._in_flight = 0
        self._count_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self.error: BaseException | None = None

    # -- the HTTP side -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def submit(self, request: Request, loop: asyncio.AbstractEventLoop) -> Handle:
        with self._count_lock:
            if self._in_flight >= self.max_concurrent_requests:
                raise Overloaded("Model is overloaded")
            self._in_flight += 1
        if request.sampling.do_sample and request.sampling.seed is None:
            request.sampling.seed = random.getrandbits(63)
        handle = Handle(loop)
        self._inbox.put(_Running(request, handle))
        metrics.QUEUE_SIZE.inc()
        self._wake.set()
        return handle

    # -- the engine thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            with torch.inference_mode():  # logits and caches stay inference tensors end to end
                self._serve()
        except BaseException as exc:  # the engine is broken: every request hears it, /health says so
            self.error = exc
            log.exception("engine loop failed")
            for item in [*self._waiting, *self._running.values()]:
                item.handle.emit("error", f"the generation engine failed: {exc}")

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._drain_inbox()
            self._drop_cancelled()
            self._admit()
            if self._running:
                self._decode_step()
            else:
                self._wake.wait(0.05)
                self._wake.clear()

    def _drain_inbox(self) -> None:
        while True:
            try:
                self._waiting.append(self._inbox.get_nowait())
            except queue.Empty:
                return

    def _drop_cancelled(self) -> None:
        for item in [w for w in self._waiting if w.handle.cancelled.is_set()]:
            self._waiting.remove(item)
            self._release(item, success=False)
        for slot, item in list(self._running.items()):
            if item.handle.cancelled.is_set():
                del self._running[slot]
                self._release(item, success=False)

    def _admit(self) -> None:
        budget = self.max_prefill_tokens
        while self._waiting and len(self._running) < self.runner.max_batch:
            item = self._waiting[0]
            if budget < len(item.request.input_ids) and budget != self.max_prefill_tokens:
                return  # next turn: decode the running requests first
            self._waiting.popleft()
            budget -= len(item.request.input_ids)
            slot = min(set(range(self.runner.max_batch)) - set(self._running))
            self._prefill(item, slot)

    def _prefill(self, item: _Running, slot: int) -> None:
        request = item.request
        item.slot, item.started_at = slot, time.monotonic()
        metrics.QUEUE_SIZE.dec()
        metrics.QUEUE_DURATION.observe(item.started_at - item.queued_at)
        sampling = request.sampling
        if sampling.refusal_penalty > 0 and self.penalty_table is not None:
            sampling.tracker = RowTracker(self.penalty_table)
        if sampling.repetition_penalty != 1.0:
            sampling.seen = list(request.input_ids)
        logits = self.runner.prefill(slot, request.input_ids, all_logits=request.decoder_input_details)
        if request.decoder_input_details:
            item.prefill = self._prefill_details(request.input_ids, logits)
            logits = logits[-1]
        metrics.PREFILL_DURATION.observe(time.monotonic() - item.started_at)
        item.detokenizer = IncrementalDetokenizer(self.tokenizer, request.input_ids)
        item.position = len(request.input_ids)
        self._running[slot] = item
        self._accept(item, choose(logits[None], [sampling])[0])

    def _prefill_details(self, ids: list[int], logits: torch.Tensor) -> list[TokenInfo]:
        logprobs = (
            logits[:-1].log_softmax(-1).gather(-1, torch.tensor(ids[1:], device=logits.device)[:, None])
        )
        values = [None, *logprobs[:, 0].tolist()]
        return [self._info(t, lp) for t, lp in zip(ids, values, strict=True)]

    def _info(self, token: int, logprob: float | None) -> TokenInfo:
        return TokenInfo(token, self.tokenizer.decode([token]), logprob, token in self.special_ids)

    def _decode_step(self) -> None:
        items = list(self._running.values())
        started = time.monotonic()
        logits = self.runner.decode(
            [i.slot for i in items], [i.last_token for i in items], [i.position for i in items]
        )
        choices = choose(logits, [i.request.sampling for i in items])
        metrics.DECODE_DURATION.observe(time.monotonic() - started)
        metrics.BATCH_SIZE.set(len(items))
        for item, choice in zip(items, choices, strict=True):
            item.position += 1
            self._accept(item, choice)

    def _accept(self, item: _Running, choice: Choice) -> None:
        """Record one generated token; finish the request if it is done."""
        token = choice.token
        item.generated.append(token)
        item.last_token = token
        sampling = item.request.sampling
        if sampling.tracker is not None:
            sampling.tracker.advance(token)
        if sampling.repetition_penalty != 1.0:
            sampling.seen.append(token)
        assert item.detokenizer is not None
        special = token in self.special_ids
        text = item.detokenizer.push(token)
        info = TokenInfo(token, text, choice.logprob, special)
        item.tokens.append(info)
        if sampling.top_n_tokens:
            item.top_tokens.append([self._info(t, lp) for t, lp in choice.top])
        if not special:
            item.text += text
        reason = self._finish_reason(item, token)
        if reason is None:
            item.handle.emit("token", (info, item.top_tokens[-1] if sampling.top_n_tokens else None))
            return
        del self._running[item.slot]
        generated = self.tokenizer.decode(item.generated, skip_special_tokens=True)
        if reason == "stop_sequence":
            generated = _cut_at_stop(generated, item.request.stop)
        item.handle.emit(
            "end",
            (
                info,
                item.top_tokens[-1] if sampling.top_n_tokens else None,
                Finished(
                    reason,
                    generated,
                    len(item.generated),
                    len(item.request.input_ids),
                    sampling.seed if sampling.do_sample else None,
                    item.prefill,
                    item.tokens,
                    item.top_tokens,
                ),
            ),
        )
        metrics.GENERATED_TOKENS.observe(len(item.generated))
        metrics.REQUEST_DURATION.observe(time.monotonic() - item.queued_at)
        self._release(item, success=True)

    def _finish_reason(self, item: _Running, token: int) -> str | None:
        if token in self.eos_ids:
            return "eos_token"
        if any(stop in item.text for stop in item.request.stop):
            return "stop_sequence"
        if len(item.generated) >= item.request.max_new_tokens:
            return "length"
        return None

    def _release(self, item: _Running, success: bool) -> None:
        with self._count_lock:
            self._in_flight -= 1
        (metrics.REQUEST_SUCCESS if success else metrics.REQUEST_FAILURE).inc()


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


def _cut_at_stop(text: str, stops: list[str]) -> str:
    """TGI keeps the stop sequence in the text and ends right after it."""
    ends = [text.find(stop) + len(stop) for stop in stops if stop in text]
    return text[: min(ends)] if ends else text
