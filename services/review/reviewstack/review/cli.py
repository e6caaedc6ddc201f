"""`reviewstack review …`: review one paper in the terminal, or a folder of papers into the store.

    reviewstack review paper.md                                  # embedded engine, started for the run
    reviewstack review paper.pdf --server review:50051           # a running Review service
    reviewstack review paper.md --backend http://tgi:80 --tokenizer /models/reviewer-v1
    reviewstack review --batch papers/ --system reviewer-v1 --store s3://reviewstack --concurrency 8

Without --server the review is written here, against --backend (a TGI-protocol server), or against the
embedded engine started on --engine-model (default: the embedded SmolLM2 model) for the duration of the
command. --batch writes reviews/<system>/<paper-id>.json to the store, skips papers already reviewed
(an interrupted batch resumes) and shows progress.
"""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from reviewstack.common.errors import FailedPrecondition, InvalidArgument
from reviewstack.common.papers import PAPER_SUFFIXES
from reviewstack.common.review_record import ReviewRecord
from reviewstack.v1 import common_pb2, review_pb2

out = Console()
err = Console(stderr=True)
Review = Callable[[review_pb2.ReviewRequest], Any]


def review(
    paper: Annotated[Path | None, typer.Argument(help="paper file: .md, .markdown, .txt or .pdf")] = None,
    batch: Annotated[Path | None, typer.Option(help="review every paper file of this folder")] = None,
    system: Annotated[str, typer.Option(help="--batch: reviews go to reviews/<system>/")] = "reviewstack",
    store: Annotated[str | None, typer.Option(help="--batch: store (default REVIEWSTACK_STORE)")] = None,
    concurrency: Annotated[
        int,
        typer.Option(min=1, max=256, help="--batch: reviews written at once (the local engine's KV slots)"),
    ] = 4,
    server: Annotated[
        str | None, typer.Option(envvar="REVIEWSTACK_REVIEW_SERVER", help="Review server HOST:PORT")
    ] = None,
    token: Annotated[str | None, typer.Option(envvar="REVIEWSTACK_TOKEN", help="bearer token")] = None,
    timeout: Annotated[
        float, typer.Option(min=1, help="--server: seconds one review may take (its call's deadline)")
    ] = 1800.0,
    backend: Annotated[str | None, typer.Option(help="TGI-protocol backend URL to review with here")] = None,
    backend_token: Annotated[
        str | None,
        typer.Option(envvar="REVIEWSTACK_BACKEND_AUTH_TOKEN", help="--backend: the bearer token it requires"),
    ] = None,
    engine_model: Annotated[
        Path | None, typer.Option(help="model directory to start the embedded engine on (default: embedded)")
    ] = None,
    tokenizer: Annotated[str | None, typer.Option(help="the served model's tokenizer directory")] = None,
    refusal_penalty: Annotated[float | None, typer.Option(min=0, help="λ of the refusal penalty")] = None,
    repetition_penalty: Annotated[
        float | None, typer.Option(min=0, help="TGI repetition penalty (1 = off; ~1.15 unloops small models)")
    ] = None,
    temperature: Annotated[float, typer.Option(min=0, help="sampling temperature (0 = greedy)")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0, max=1, help="nucleus sampling mass (0 = off)")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="sampling seed: same seed, same review")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=0, help="longest review in tokens (0 = default)")] = 0,
    four_aspects: Annotated[bool, typer.Option("--four-aspects", help="the 4-aspect schema")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the review as JSON")] = False,
) -> None:
    """Review papers: one in the terminal, or a folder into the store."""
    if (paper is None) == (batch is None):
        raise InvalidArgument("give either a PAPER file or --batch DIR")
    parameters = review_pb2.GenerationParameters(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p
    )
    if seed is not None:
        parameters.seed = seed
    if refusal_penalty is not None:
        parameters.refusal_penalty = refusal_penalty
    if repetition_penalty is not None:
        parameters.repetition_penalty = repetition_penalty
    schema = common_pb2.ASPECT_SCHEMA_FOUR if four_aspects else common_pb2.ASPECT_SCHEMA_SEVEN
    # the embedded engine gets one KV-cache slot per review written at once
    source = _Source(server, token, backend, engine_model, tokenizer, timeout, backend_token, concurrency)
    if paper is not None:
        _run_until_stopped(_one(source, _request(paper, schema, parameters), as_json))
    else:
        assert batch is not None
        _run_until_stopped(_batch(source, batch, system, store, concurrency, schema, parameters))


def _run_until_stopped(work: Coroutine[Any, Any, None]) -> None:
    """Run `work`; SIGTERM (a `timeout`, a job runner, a pod stopping) cancels it as Ctrl-C does, so the
    engine it may have started is stopped on the way out instead of left running without a parent."""

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await work

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        err.print("stopped (SIGTERM); papers already reviewed stay in the store")
        raise typer.Exit(128 + signal.SIGTERM) from None


def _request(
    path: Path, schema: int, parameters: review_pb2.GenerationParameters
) -> review_pb2.ReviewRequest:
    if not path.is_file():
        raise InvalidArgument(f"{path}: no such file")
    paper = common_pb2.Paper(
        id=path.stem, file=common_pb2.PaperFile(filename=path.name, content=path.read_bytes())
    )
    return review_pb2.ReviewRequest(paper=paper, schema=schema, parameters=parameters)


class _Source:
    """Where reviews are written: a Review server, or a reviewer here against a backend."""

    def __init__(
        self,
        server: str | None,
        token: str | None,
        backend: str | None,
        engine_model: Path | None,
        tokenizer: str | None,
        timeout: float = 1800.0,
        backend_token: str | None = None,
        slots: int = 4,
    ) -> None:
        self.server, self.token, self.backend = server, token, backend
        self.slots = slots
        self.engine_model, self.tokenizer, self.timeout = engine_model, tokenizer, timeout
        self.backend_token = backend_token

    @asynccontextmanager
    async def open(self) -> AsyncIterator[tuple[Review, Callable[..., AsyncIterator[Any]]]]:
        async with AsyncExitStack() as stack:
            if self.server:
                from reviewstack.common.grpc import make_channel
                from reviewstack.v1 import review_pb2_grpc

                channel = await stack.enter_async_context(make_channel(self.server, self.token, aio=True))
                stub = review_pb2_grpc.ReviewStub(channel)
                # a deadline of our own: without one the server applies its short default to unary calls,
                # and a review on a CPU backend takes minutes
                yield (
                    functools.partial(stub.Review, timeout=self.timeout),
                    functools.partial(stub.StreamReview, timeout=self.timeout),
                )
                return
            reviewer = await stack.enter_async_context(self._reviewer())
            yield reviewer.review, reviewer.stream

    @asynccontextmanager
    async def _reviewer(self) -> AsyncIterator[Any]:
        from reviewstack.common.grpc.auth import TokenSource
        from reviewstack.common.tokenizer import load_tokenizer
        from reviewstack.review.backend import Backend
        from reviewstack.review.local_engine import budget, embedded_engine
        from reviewstack.review.reviewer import Reviewer, ReviewLimits

        async with AsyncExitStack() as stack:
            url, model, limits, token = self.backend, None, ReviewLimits(), self.backend_token or None
            if url is None:
                url, model, token = await stack.enter_async_context(
                    embedded_engine(self.engine_model, err, self.slots)
                )
                prompt, new = budget(model)
                limits = ReviewLimits(max_prompt_length=prompt, max_new_tokens=new)
            tokenizer = load_tokenizer(self.tokenizer or model)
            yield Reviewer(tokenizer, Backend(url, tokens=TokenSource(token=token)), limits)


async def _one(source: _Source, request: review_pb2.ReviewRequest, as_json: bool) -> None:
    final = None
    async with source.open() as (_, stream):
        if as_json:
            with out.status("reviewing…"):
                async for chunk in stream(request):
                    final = chunk.final if chunk.HasField("final") else final
        else:  # the review as the model writes it, then its structure
            async for chunk in stream(request):
                out.print(chunk.text, end="", markup=False, highlight=False)
                final = chunk.final if chunk.HasField("final") else final
    if final is None:
        raise InvalidArgument("the stream ended without a review")
    if as_json:
        out.print_json(json_format.MessageToJson(final))
    else:
        out.print()
        _print_summary(final)


def _print_summary(response: review_pb2.ReviewResponse) -> None:
    table = Table(title="review", show_lines=False)
    table.add_column("aspect")
    table.add_column("points", justify="right")
    for aspect in response.review.aspects:
        points = "not written" if aspect.missing else "declined" if aspect.empty else str(len(aspect.items))
        table.add_row(aspect.name[:70], points)
    out.print(table)
    lineage = response.lineage
    out.print(
        f"[dim]model {lineage.model} · prompt {lineage.prompt_version} · "
        f"λ {lineage.parameters.refusal_penalty} · "
        f"{response.prompt_tokens} prompt + {response.generated_tokens} generated tokens[/]"
    )
    for warning in response.warnings:
        err.print(f"[yellow]warning:[/] {warning}")


async def _batch(
    source: _Source,
    folder: Path,
    system: str,
    store_uri: str | None,
    concurrency: int,
    schema: int,
    parameters: review_pb2.GenerationParameters,
) -> None:
    from reviewstack.common.progress import ProgressDisplay
    from reviewstack.common.settings import StoreSettings
    from reviewstack.common.store import check_prefix, open_store

    if not folder.is_dir():
        raise InvalidArgument(f"--batch {folder}: not a folder")
    prefix = check_prefix(f"reviews/{system}")
    settings = StoreSettings(store=store_uri) if store_uri else StoreSettings()
    store = open_store(settings.store, settings)
    papers = sorted(p for p in folder.iterdir() if p.suffix.lower() in PAPER_SUFFIXES and p.is_file())
    if not papers:
        raise InvalidArgument(f"{folder} holds no paper files ({', '.join(PAPER_SUFFIXES)})")
    todo = [p for p in papers if not store.exists(f"{prefix}/{p.stem}.json")]
    if len(todo) < len(papers):
        _check_same_settings(store, prefix, next(p for p in papers if p not in todo), parameters)
    done, failed = len(papers) - len(todo), []
    gate = asyncio.Semaphore(concurrency)
    async with source.open() as (review_call, _):
        with ProgressDisplay() as progress:
            progress.update("reviewing", done, len(papers), f"{done} already in the store")

            async def one(path: Path) -> None:
                nonlocal done
                async with gate:
                    request = _request(path, schema, parameters)
                    try:
                        response = await review_call(request)
                    except Exception as exc:  # one paper's failure is reported, the batch goes on
                        failed.append(f"{path.name}: {_reason(exc)}")
                        return
                    record = _record(path, request, response, system)
                    await asyncio.to_thread(store.put_bytes, f"{prefix}/{path.stem}.json", record.to_json())
                    done += 1
                    progress.update("reviewing", done, len(papers), path.stem)

            await asyncio.gather(*(one(p) for p in todo))
    out.print(f"{done} of {len(papers)} papers reviewed into {store.uri_for(prefix)}/")
    for line in failed:
        err.print(f"[red]failed:[/] {line}")
    if failed:
        raise typer.Exit(1)


def _check_same_settings(
    store: Any, prefix: str, reviewed: Path, parameters: review_pb2.GenerationParameters
) -> None:
    """A resumed batch skips papers already reviewed: only right when they were written with the settings
    asked for now, or one system would mix two decodings and its evaluation would mean neither."""
    stored = ReviewRecord.from_json(store.get_bytes(f"{prefix}/{reviewed.stem}.json"))
    had = stored.lineage.get("parameters", {})
    asked = json_format.MessageToDict(parameters, preserving_proto_field_name=True)
    differ = [f"{k} {had[k]} → {v}" for k, v in asked.items() if k in had and float(had[k]) != float(v)]
    if differ:
        raise FailedPrecondition(
            f"{store.uri_for(prefix)}/ already holds reviews written with other settings "
            f"({', '.join(differ)}; e.g. {reviewed.stem}.json): review into another --system, or delete "
            "that folder to redo them"
        )


def _reason(exc: Exception) -> str:
    details = getattr(exc, "details", None)  # a gRPC error's own message
    return details() if callable(details) else str(exc)


def _record(
    path: Path, request: review_pb2.ReviewRequest, response: review_pb2.ReviewResponse, system: str
) -> ReviewRecord:
    """What the evaluation service reads: the review by aspect, its text, and where it came from."""
    return ReviewRecord.from_response(path.name, request.paper.file.content, system, response)
