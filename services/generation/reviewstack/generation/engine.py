"""The engine loop: a queue of requests, one KV-cache slot each, continuous batching.

One thread owns the model. Each turn it admits waiting requests into free slots (prefill, one at a time,
at most `max_prefill_tokens` a turn so that running requests are not starved), then runs one decode step
for every running request, hands each its token, and frees the slots of finished ones. Requests talk to
the loop through thread-safe handles; the HTTP layer awaits their events on its own event loop.

A failure fails what it belongs to, never the engine: an exception while prefilling, sampling or
detokenizing one request fails that request; one in a decode step (the batch's forward) fails the requests
of that step; one in the loop's own bookkeeping fails what was queued and running. Their slots are freed,
and the loop goes on. Whether the model itself still works is then asked of the model: a one-token prefill
into a free slot (`_probe`). Only when that fails is the engine unhealthy (`/health` 503, new requests
refused at once), and it probes again every few seconds, so a passing fault (an out-of-memory moment) heals
without a restart while a broken model or device keeps failing its liveness probe.
"""

from __future__ import annotations

import asyncio
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from reviewstack.common.logging import get_logger
from reviewstack.generation import metrics
from reviewstack.generation.detokenize import IncrementalDetokenizer
from reviewstack.generation.runner import DecoderRunner
from reviewstack.generation.sampling import Choice, RowFailed, SamplingSettings, SlotSampler
from reviewstack.penalty.core import PenaltyTable

log = get_logger(__name__)
PROBE_INTERVAL_S = 5.0  # how often an unhealthy engine asks its model again


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


@dataclass(frozen=True)
class TokenEvent:
    """A token the request generated, with its top alternatives when it asked for them."""

    token: TokenInfo
    top: list[TokenInfo] | None


@dataclass(frozen=True)
class EndEvent(TokenEvent):
    """The request's last token, and how it ended."""

    finished: Finished


@dataclass(frozen=True)
class ErrorEvent:
    """The request failed; nothing follows."""

    message: str


EngineEvent = TokenEvent | EndEvent | ErrorEvent


@dataclass
class Request:
    """A validated generation request, as the HTTP layer hands it to the engine."""

    input_ids: list[int]
    max_new_tokens: int
    sampling: SamplingSettings
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
        self.events: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self.cancelled = threading.Event()

    def emit(self, event: EngineEvent) -> None:  # called from the engine thread
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the caller's event loop is closed: nobody is listening any more
            self.cancel()

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
        probe_interval_s: float = PROBE_INTERVAL_S,
    ) -> None:
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_concurrent_requests = max_concurrent_requests
        self.max_prefill_tokens = max_prefill_tokens
        self.sampler = SlotSampler(runner.max_batch, runner.shape.vocab, runner.device, penalty_table)
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
        self.error: str | None = None  # why the model is unusable; None while it works
        self.probe_interval_s = probe_interval_s
        self._next_probe = 0.0

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

    @property
    def problem(self) -> str | None:
        """Why the engine cannot serve now (for /health and for refused requests), or None."""
        if not self._thread.is_alive():
            return "the engine thread is not running" + (f": {self.error}" if self.error else "")
        return self.error

    def submit(self, request: Request, loop: asyncio.AbstractEventLoop) -> Handle:
        with self._count_lock:
            if self._in_flight >= self.max_concurrent_requests:
                raise Overloaded("Model is overloaded")
            self._in_flight += 1
        if request.sampling.do_sample and request.sampling.seed is None:
            request.sampling = replace(request.sampling, seed=random.getrandbits(63))
        handle = Handle(loop)
        self._inbox.put(_Running(request, handle))
        metrics.QUEUE_SIZE.inc()
        self._wake.set()
        return handle

    # -- the engine thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            with torch.inference_mode():  # logits and caches stay inference tensors end to end
                while not self._stop.is_set():
                    try:
                        self._turn()
                    except Exception as exc:  # the loop's own bookkeeping: fail what is in it, go on
                        self._fail_everything(exc, "the engine loop")
                        self._wake.wait(0.05)  # a fault that repeats every turn must not spin the CPU
        except BaseException as exc:  # interpreter shutdown or the like: every request hears it
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("engine loop stopped")
            for item in [*self._waiting, *self._running.values()]:
                item.handle.emit(ErrorEvent(f"the generation engine stopped: {self.error}"))

    def _turn(self) -> None:
        self._drain_inbox()
        self._drop_cancelled()
        if self.error is not None:
            self._while_unusable()
            return
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
            metrics.QUEUE_SIZE.dec()
            self._release(item, success=False)
        for slot, item in list(self._running.items()):
            if item.handle.cancelled.is_set():
                del self._running[slot]
                self._release(item, success=False)

    def _admit(self) -> None:
        budget = self.max_prefill_tokens
        while self._waiting and len(self._running) < self.runner.max_batch and self.error is None:
            item = self._waiting[0]
            if budget < len(item.request.input_ids) and budget != self.max_prefill_tokens:
                return  # next turn: decode the running requests first
            self._waiting.popleft()
            budget -= len(item.request.input_ids)
            slot = min(set(range(self.runner.max_batch)) - set(self._running))
            try:
                self._prefill(item, slot)
            except Exception as exc:
                self._failed([item], exc, "prefill")

    def _prefill(self, item: _Running, slot: int) -> None:
        request = item.request
        item.slot, item.started_at = slot, time.monotonic()
        metrics.QUEUE_SIZE.dec()
        metrics.QUEUE_DURATION.observe(item.started_at - item.queued_at)
        self.sampler.start(slot, request.sampling, request.input_ids)
        logits = self.runner.prefill(slot, request.input_ids, all_logits=request.decoder_input_details)
        if request.decoder_input_details:
            item.prefill = self._prefill_details(request.input_ids, logits)
            logits = logits[-1]
        metrics.PREFILL_DURATION.observe(time.monotonic() - item.started_at)
        item.detokenizer = IncrementalDetokenizer(self.tokenizer, request.input_ids)
        item.position = len(request.input_ids)
        self._running[slot] = item
        choice = self.sampler.choose([slot], logits[None])[0]
        if isinstance(choice, RowFailed):
            raise choice
        self._accept(item, choice)

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
        try:
            logits = self.runner.decode(
                [i.slot for i in items], [i.last_token for i in items], [i.position for i in items]
            )
            choices = self.sampler.choose([i.slot for i in items], logits)
        except Exception as exc:  # the batch's forward: no one request to blame
            self._failed(items, exc, "a decode step")
            return
        metrics.DECODE_DURATION.observe(time.monotonic() - started)
        metrics.BATCH_SIZE.set(len(items))
        failures = []
        for item, choice in zip(items, choices, strict=True):
            try:
                if isinstance(choice, RowFailed):
                    raise choice
                item.position += 1
                self._accept(item, choice)
            except Exception as exc:
                failures.append((item, exc))
        for item, exc in failures:
            self._failed([item], exc, "decoding")

    def _accept(self, item: _Running, choice: Choice) -> None:
        """Record one generated token; finish the request if it is done."""
        token = choice.token
        item.generated.append(token)
        item.last_token = token
        sampling = item.request.sampling
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
            item.handle.emit(TokenEvent(info, item.top_tokens[-1] if sampling.top_n_tokens else None))
            return
        del self._running[item.slot]
        generated = self.tokenizer.decode(item.generated, skip_special_tokens=True)
        if reason == "stop_sequence":
            generated = _cut_at_stop(generated, item.request.stop)
        finished = Finished(
            reason,
            generated,
            len(item.generated),
            len(item.request.input_ids),
            sampling.seed if sampling.do_sample else None,
            item.prefill,
            item.tokens,
            item.top_tokens,
        )
        metrics.GENERATED_TOKENS.observe(len(item.generated))
        metrics.REQUEST_DURATION.observe(time.monotonic() - item.queued_at)
        self._release(item, success=True)  # before the caller hears: its next request finds the room
        item.handle.emit(EndEvent(info, item.top_tokens[-1] if sampling.top_n_tokens else None, finished))

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

    # -- failures ------------------------------------------------------------------------------------
    def _failed(self, items: list[_Running], exc: Exception, stage: str) -> None:
        """Fail `items` (what `exc` belongs to) once the model was asked whether it still works, so a
        caller that hears of the failure and then asks /health gets the answer that holds."""
        log.error("generation failed", stage=stage, requests=len(items), error=f"{type(exc).__name__}: {exc}")
        log.debug("generation failure", exc_info=exc)
        for item in items:
            self._forget(item)
        self._probe()
        message = f"generation failed in {stage}: {type(exc).__name__}: {exc}"
        for item in items:
            item.handle.emit(ErrorEvent(message))

    def _fail(self, item: _Running, message: str) -> None:
        self._forget(item)
        item.handle.emit(ErrorEvent(message))

    def _forget(self, item: _Running) -> None:
        """Give the request's slot and its place in the count back."""
        if self._running.get(item.slot) is item:
            del self._running[item.slot]
        if not item.started_at:
            metrics.QUEUE_SIZE.dec()  # it never left the queue
        self._release(item, success=False)

    def _fail_everything(self, exc: Exception, stage: str) -> None:
        self._drain_inbox()
        items = [*self._waiting, *self._running.values()]
        self._waiting.clear()
        self._failed(items, exc, stage)

    def _probe(self) -> None:
        """A one-token prefill into a free slot: usable when the model computes finite logits for it."""
        self._next_probe = time.monotonic() + self.probe_interval_s
        free = set(range(self.runner.max_batch)) - set(self._running)
        if not free:
            return  # not after a failure, which always frees the failed request's slot
        try:
            logits = self.runner.prefill(min(free), [self._probe_token])
            problem = None if bool(torch.isfinite(logits).all()) else "it computes non-finite logits"
        except Exception as exc:
            problem = f"a one-token prefill raised {type(exc).__name__}: {exc}"
        if problem is not None:
            self.error = f"the model is unusable: {problem}"
            log.error("generation engine unhealthy", reason=self.error)
            running = list(self._running.values())
            for item in running:
                self._fail(item, f"the generation engine is unhealthy ({self.error}); retry later")
        elif self.error is not None:
            log.info("generation engine healthy again")
            self.error = None

    def _while_unusable(self) -> None:
        """Refuse what queued before the engine went unhealthy; ask the model again now and then."""
        for item in list(self._waiting):
            self._waiting.remove(item)
            self._fail(item, f"the generation engine is unhealthy ({self.error}); retry later")
        if time.monotonic() >= self._next_probe:
            self._probe()
        if self.error is not None:
            self._wake.wait(0.05)
            self._wake.clear()

    @property
    def _probe_token(self) -> int:
        token = getattr(self.tokenizer, "bos_token_id", None)
        return token if isinstance(token, int) else 0


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
