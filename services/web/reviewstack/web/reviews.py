"""Reviews the page asked for: the uploaded paper kept in memory, the Review service's stream turned
into events a browser can render aspect by aspect, and the finished review kept for download.

A review is made in two requests because EventSource can only GET: the form posts the paper (checked
here, then kept with its settings under a random id), and the page then opens `/reviews/<id>/events`,
which calls the Review service's StreamReview and relays it. Everything is per process and bounded: old
reviews are dropped first, and a session sees only its own.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import grpc

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.errors import InvalidArgument, NotFound
from reviewstack.common.grpc.auth import AUTH_METADATA_KEY, TokenSource
from reviewstack.common.grpc.client import make_channel
from reviewstack.common.logging import get_logger
from reviewstack.common.papers import PAPER_SUFFIXES
from reviewstack.common.review_format import is_empty, parse
from reviewstack.common.review_record import ReviewRecord
from reviewstack.v1 import common_pb2, review_pb2, review_pb2_grpc
from reviewstack.web.settings import ServedSystem

log = get_logger(__name__)

MAX_REVIEWS = 256  # kept in memory by one process, oldest dropped first
MAX_REVIEWS_PER_SESSION = 32
KEEP_S = 6 * 3600


class UploadRejected(Exception):
    """A paper the page will not send on; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Paper:
    filename: str
    content: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def check_upload(filename: str | None, content: bytes, max_bytes: int) -> Paper:
    """The uploaded paper, or UploadRejected: its type by name and by content, its size."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name.strip()
    if not name:
        raise UploadRejected(400, "no paper was attached: choose a .pdf, .md or .txt file")
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in PAPER_SUFFIXES:
        raise UploadRejected(
            415, f"{name!r} is not a paper this page reads: send one of {', '.join(PAPER_SUFFIXES)}"
        )
    if len(content) > max_bytes:
        raise UploadRejected(
            413, f"{name!r} is {len(content) / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.1f} MiB"
        )
    if not content.strip():
        raise UploadRejected(400, f"{name!r} is empty")
    if suffix == ".pdf":
        if not content.startswith(b"%PDF-"):
            raise UploadRejected(415, f"{name!r} is named .pdf but is not a PDF file")
    else:
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            raise UploadRejected(
                415, f"{name!r} is not UTF-8 text: save it as UTF-8, or send the PDF"
            ) from None
    return Paper(name[-200:], content)


def check_penalty(value: float, maximum: float) -> float:
    if not math.isfinite(value) or not 0 <= value <= maximum:
        raise InvalidArgument(f"λ must be a number from 0 to {maximum:g}, got {value}")
    return value


@dataclass
class ReviewJob:
    """One review: what was asked, and what came back."""

    id: str
    session: str
    paper: Paper
    system: str
    refusal_penalty: float
    created: float = field(default_factory=time.monotonic)
    started: bool = False
    response: review_pb2.ReviewResponse | None = None
    error: str | None = None
    first_aspect_s: float | None = None
    finished_s: float | None = None

    def record(self) -> ReviewRecord:
        if self.response is None:
            raise NotFound("this review has not finished; download it once it has")
        return ReviewRecord.from_response(self.paper.filename, self.paper.content, self.system, self.response)


class ReviewJobs:
    """The reviews of this process, bounded; a session finds only its own."""

    def __init__(self) -> None:
        self._jobs: OrderedDict[str, ReviewJob] = OrderedDict()

    def add(self, session: str, paper: Paper, system: str, refusal_penalty: float) -> ReviewJob:
        self._expire()
        mine = [j for j in self._jobs.values() if j.session == session]
        if len(mine) >= MAX_REVIEWS_PER_SESSION:
            self._jobs.pop(mine[0].id)
        while len(self._jobs) >= MAX_REVIEWS:
            self._jobs.popitem(last=False)
        job = ReviewJob(secrets.token_urlsafe(12), session, paper, system, refusal_penalty)
        self._jobs[job.id] = job
        return job

    def get(self, session: str, job_id: str) -> ReviewJob:
        job = self._jobs.get(job_id)
        if job is None or not hmac.compare_digest(job.session.encode(), session.encode()):
            raise NotFound(
                "no such review in this session (reviews are kept for a few hours): start a new one"
            )
        return job

    def of_session(self, session: str) -> list[ReviewJob]:
        return [j for j in reversed(self._jobs.values()) if j.session == session]

    def _expire(self) -> None:
        now = time.monotonic()
        for job_id in [j.id for j in self._jobs.values() if now - j.created > KEEP_S]:
            self._jobs.pop(job_id)


def call_metadata(tokens: TokenSource) -> tuple[tuple[str, str], ...]:
    """The services' token for one call, read now: a rotated Secret takes effect without a restart."""
    token = tokens.current()
    return ((AUTH_METADATA_KEY, f"Bearer {token.decode()}"),) if token else ()


class ReviewServices:
    """One channel per configured Review service (the only targets the page ever calls)."""

    def __init__(self, systems: Mapping[str, ServedSystem], token: TokenSource) -> None:
        self.systems = dict(systems)
        self._token = token
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, system: str) -> review_pb2_grpc.ReviewStub:
        if system not in self.systems:
            raise InvalidArgument(f"unknown system {system!r}: pick one of {', '.join(self.systems)}")
        if system not in self._channels:
            self._channels[system] = make_channel(self.systems[system].target, aio=True)
        return review_pb2_grpc.ReviewStub(self._channels[system])

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return call_metadata(self._token)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


class AspectTracker:
    """Which aspects the streamed text has finished: an aspect is done once the next one has begun."""

    def __init__(self, schema: AspectSchema = AspectSchema.SEVEN) -> None:
        self.schema = schema
        self.text = ""
        self.sent: set[str] = set()

    def feed(self, delta: str) -> list[dict[str, Any]]:
        self.text += delta
        complete = self.text[: self.text.rfind("\n") + 1]  # whole lines only
        parsed = parse(complete, self.schema, strict=False)
        begun = [key for key in self.schema.keys if key not in parsed.missing]
        done = begun[:-1]  # the last begun aspect may still be growing
        new = [key for key in done if key not in self.sent]
        self.sent.update(new)
        return [self._event(key, parsed.aspects[key]) for key in new]

    def _event(self, key: str, items: list[str]) -> dict[str, Any]:
        index = self.schema.keys.index(key)
        empty = is_empty(items)
        return {
            "index": index,
            "name": self.schema.aspects[index].criterion,
            "items": [] if empty else items,
            "empty": empty,
            "missing": False,
        }


def decoding(system: ServedSystem, refusal_penalty: float) -> review_pb2.GenerationParameters:
    """The request's decoding: the system's own, with the λ the person chose."""
    parameters = review_pb2.GenerationParameters(
        temperature=system.temperature, top_p=system.top_p, refusal_penalty=refusal_penalty
    )
    if system.repetition_penalty is not None:
        parameters.repetition_penalty = system.repetition_penalty
    if system.seed is not None:
        parameters.seed = system.seed
    return parameters


def final_event(job: ReviewJob) -> dict[str, Any]:
    """The finished review as the page shows it: the service's own parse, lineage, warnings, times."""
    response = job.response
    if response is None:
        raise NotFound("this review has not finished")
    lineage = response.lineage
    parameters = lineage.parameters
    return {
        "aspects": [
            {
                "index": i,
                "name": a.name,
                "items": [] if a.empty else list(a.items),
                "empty": a.empty,
                "missing": a.missing,
            }
            for i, a in enumerate(response.review.aspects)
        ],
        "lineage": {
            "system": job.system,
            "model": lineage.model,
            "prompt version": lineage.prompt_version,
            "λ (refusal penalty)": f"{parameters.refusal_penalty:g}",
            "decoding": _decoding(parameters),
            "backend": lineage.backend,
            "prompt tokens": response.prompt_tokens,
            "generated tokens": response.generated_tokens,
        },
        "warnings": list(response.warnings),
        "first_aspect_s": job.first_aspect_s,
        "finished_s": job.finished_s,
    }


def _decoding(p: review_pb2.GenerationParameters) -> str:
    parts = ["greedy" if p.temperature == 0 else f"temperature {p.temperature:g}"]
    if p.top_p:
        parts.append(f"top-p {p.top_p:g}")
    if p.HasField("repetition_penalty") and p.repetition_penalty != 1:
        parts.append(f"repetition penalty {p.repetition_penalty:g}")
    if p.HasField("seed"):
        parts.append(f"seed {p.seed}")
    parts.append(f"≤ {p.max_new_tokens} new tokens")
    return ", ".join(parts)


_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "the review service of {system!r} cannot be reached right now ({detail}); "
    "try again in a minute, or pick another system",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "the review service of {system!r} is busy ({detail}); "
    "try again in a minute",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the review took longer than the page waits ({detail}); "
    "try a shorter paper",
    grpc.StatusCode.UNAUTHENTICATED: "the page's own credentials were refused by the review service: "
    "tell the operator (REVIEWSTACK_GRPC_TOKEN_FILE)",
}


def failure_message(exc: grpc.RpcError, system: str) -> str:
    """What the person reading the page can do about a failed call."""
    code, detail = exc.code(), exc.details() or exc.code().name  # type: ignore[attr-defined]
    template = _MESSAGES.get(code)
    if template is not None:
        return template.format(system=system, detail=detail)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
        return f"the paper could not be reviewed: {detail}"
    return f"the review failed ({code.name}): {detail}"


async def stream_review(
    job: ReviewJob, services: ReviewServices, timeout_s: float
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs: `text` as it is written, `aspect` as each one ends, then `done`; `failed`
    once, with a message, when the review cannot be written."""
    request = review_pb2.ReviewRequest(
        paper=common_pb2.Paper(
            id=PurePosixPath(job.paper.filename).stem,
            file=common_pb2.PaperFile(filename=job.paper.filename, content=job.paper.content),
        ),
        schema=common_pb2.ASPECT_SCHEMA_SEVEN,
        parameters=decoding(services.systems[job.system], job.refusal_penalty),
    )
    tracker = AspectTracker()
    call = services.stub(job.system).StreamReview(request, timeout=timeout_s, metadata=services.metadata())
    try:
        async for chunk in call:
            if chunk.text:
                yield "text", {"text": chunk.text}
                for aspect in tracker.feed(chunk.text):
                    if job.first_aspect_s is None:
                        job.first_aspect_s = round(time.monotonic() - job.created, 2)
                    yield "aspect", aspect
            if chunk.HasField("final"):
                job.response = chunk.final
                job.finished_s = round(time.monotonic() - job.created, 2)
                if job.first_aspect_s is None:
                    job.first_aspect_s = job.finished_s
                log.info(
                    "review written",
                    system=job.system,
                    refusal_penalty=job.refusal_penalty,
                    first_aspect_s=job.first_aspect_s,
                    finished_s=job.finished_s,
                    tokens=chunk.final.generated_tokens,
                )
                yield "done", final_event(job)
                return
        job.error = "the review service ended the stream without a review; try again"
    except grpc.RpcError as exc:
        job.error = failure_message(exc, job.system)
        log.warning("review failed", system=job.system, code=exc.code().name, error=exc.details())
    finally:
        call.cancel()  # a closed page stops the generation instead of leaving it running
    yield "failed", {"message": job.error}
