"""`reviewstack eval …`: evaluate systems against human reviews, locally (default) or on an Evaluation
server (`--server`); match two lists of points; generate baseline reviews through an OpenAI-compatible
endpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    no_args_is_help=True, help="Evaluate reviews: hits against human review points, statistics, reports."
)
out = Console()
err = Console(stderr=True)

SystemsOpt = Annotated[
    list[str],
    typer.Option(
        "--system", help="NAME=URI: reviews/<system>/ in a store, a folder, or an ICLR LLM-review CSV"
    ),
]
HumanOpt = Annotated[
    str, typer.Option(help="data-prep dataset folder (ground_truth.jsonl): store URI or path")
]
OutOpt = Annotated[
    str,
    typer.Option(
        "--out", help="store URI or directory for evaluations/<eval-id>/ (with --server: default its store)"
    ),
]
MatcherOpt = Annotated[
    str,
    typer.Option(
        help="embedded (default; no LLM, no network), pair (a cross-encoder; see its caveat) or llm"
    ),
]
JudgeEndpointOpt = Annotated[
    str,
    typer.Option(
        help="--matcher llm: the judge's OpenAI-compatible base URL; with --server, the name of an endpoint "
        "its operator configured (default: the server's judge)"
    ),
]
JudgeModelOpt = Annotated[str, typer.Option(help="the judge's model name (--matcher llm, not with --server)")]
ServerOpt = Annotated[str | None, typer.Option(help="run on an Evaluation server at HOST:PORT")]
TokenOpt = Annotated[str | None, typer.Option(envvar="REVIEWSTACK_TOKEN", help="bearer token")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON")]


@app.command()
def run(
    system: SystemsOpt,
    human: HumanOpt,
    out_uri: OutOpt = "",
    matcher: MatcherOpt = "embedded",
    judge_endpoint: JudgeEndpointOpt = "",
    judge_model: JudgeModelOpt = "",
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the 95% intervals")] = 1000,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap")] = 0,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score each system's reviews against the human points (human leave-one-out included); write
    report.json, report.html, plots/ and points.json under evaluations/<eval-id>/."""
    from reviewstack.common.errors import InvalidArgument
    from reviewstack.common.store.scope import for_server
    from reviewstack.evaluation.job import SystemSpec

    systems = [SystemSpec.parse(s) for s in system]
    if server is None:
        if not out_uri:
            raise InvalidArgument("--out is required: the store URI or directory for evaluations/<eval-id>/")
        config = _config(
            systems=systems,
            human=human,
            output=out_uri,
            matcher=matcher,
            judge_endpoint=judge_endpoint,
            judge_model=judge_model,
            bootstrap=bootstrap,
            seed=seed,
        )
        _show(_run_local(config), as_json)
        return
    if judge_model:
        raise InvalidArgument("--judge-model is the server operator's choice: name its --judge-endpoint")
    from reviewstack.v1 import evaluation_pb2

    # the server resolves every location inside what it may read and write; the judge goes by name
    request = evaluation_pb2.EvaluateRequest(
        systems=[evaluation_pb2.SystemRef(name=s.name, uri=for_server(s.uri)) for s in systems],
        human=for_server(human),
        output=for_server(out_uri),
        matcher=matcher,
        judge=evaluation_pb2.JudgeSpec(endpoint=judge_endpoint),
        bootstrap=bootstrap,
        seed=seed,
    )
    _show(_run_remote(request, server, token), as_json)


@app.command()
def compare(
    a: Annotated[str, typer.Option("--a", help="first system, NAME=URI")],
    b: Annotated[str, typer.Option("--b", help="second system, NAME=URI")],
    human: HumanOpt,
    out_uri: OutOpt = "",
    matcher: MatcherOpt = "embedded",
    judge_endpoint: JudgeEndpointOpt = "",
    judge_model: JudgeModelOpt = "",
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Two systems paper by paper: win / tie / loss on hits and on precision, with a sign test."""
    run(
        [a, b],
        human,
        out_uri,
        matcher,
        judge_endpoint,
        judge_model,
        server=server,
        token=token,
        as_json=as_json,
    )


@app.command()
def match(
    generated: Annotated[Path, typer.Option(help="JSON list of the generated points", exists=True)],
    reference: Annotated[Path, typer.Option(help="JSON list of the reference (human) points", exists=True)],
    as_json: JsonOpt = False,
) -> None:
    """Match two lists of points with the default matcher: one-to-one pairs and their scores."""
    from reviewstack.evaluation import match_points

    generated_points, reference_points = _string_list(generated), _string_list(reference)
    pairs = match_points(generated_points, reference_points)
    if as_json:
        out.print_json(json.dumps([{"generated": g, "reference": r, "score": s} for g, r, s in pairs]))
        return
    table = Table("generated", "reference", "score", title=f"{len(pairs)} matches")
    for g, r, s in pairs:
        table.add_row(f"[{g}] {generated_points[g]}", f"[{r}] {reference_points[r]}", f"{s:.3f}")
    out.print(table)
    out.print(
        f"hits {len(pairs)} of {len(reference_points)} reference points; "
        f"{len(pairs)} of {len(generated_points)} generated points matched"
    )


@app.command()
def generate(
    papers: Annotated[Path, typer.Argument(help="folder of paper files (.md, .markdown, .txt, .pdf)")],
    system: Annotated[str, typer.Option(help="reviews go to reviews/<system>/ (e.g. gpt-4-1106)")],
    base_url: Annotated[
        str, typer.Option(help="the endpoint's OpenAI base URL, e.g. https://api.openai.com/v1")
    ],
    model: Annotated[str, typer.Option(help="model name the endpoint serves")],
    store: Annotated[str | None, typer.Option(help="store (default REVIEWSTACK_STORE)")] = None,
    api_key_env: Annotated[
        str, typer.Option(help="environment variable holding the API key")
    ] = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight")] = 4,
    max_tokens: Annotated[int, typer.Option(min=1, help="longest review in tokens")] = 1150,
    temperature: Annotated[float, typer.Option(min=0, help="0 = greedy")] = 0.0,
    top_p: Annotated[
        float | None, typer.Option(min=0, max=1, help="nucleus mass (default: the endpoint's)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="sampling seed, where the endpoint takes one")] = None,
    tokenizer: Annotated[
        Path | None, typer.Option(help="tokenizer that cuts long papers (default Llama-3)")
    ] = None,
    max_prompt_length: Annotated[int, typer.Option(min=64, help="prompt tokens at most")] = 11_138,
) -> None:
    """Review a folder of papers through an OpenAI-compatible endpoint with the reviewer instruction (a
    GPT-4-class baseline), into reviews/<system>/<paper-id>.json: concurrent, resumable."""
    from rich.markup import escape

    from reviewstack.common.progress import ProgressDisplay
    from reviewstack.common.settings import StoreSettings
    from reviewstack.common.store import open_store
    from reviewstack.evaluation.openai_reviews import generate_reviews

    settings = StoreSettings(store=store) if store else StoreSettings()
    with ProgressDisplay() as display:
        batch = generate_reviews(
            papers,
            system,
            open_store(settings.store, settings),
            base_url,
            model,
            api_key_env=api_key_env,
            concurrency=concurrency,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            tokenizer=tokenizer,
            max_prompt_length=max_prompt_length,
            progress=display.update,
        )
    out.print(
        f"{len(batch.written)} reviewed, {len(batch.skipped)} already there, {len(batch.failed)} failed "
        f"of {batch.papers} papers: {batch.location}/"
    )
    for failure in batch.failed:
        err.print(f"[red]failed:[/] {escape(failure.what)}: {escape(failure.reason)}", highlight=False)
    if batch.failed:
        raise typer.Exit(1)


def _string_list(path: Path) -> list[str]:
    from reviewstack.common.errors import InvalidArgument

    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{path}: not JSON ({exc}); expected a list of strings") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f'{path}: expected a JSON list of strings, e.g. ["point one", "point two"]')
    return value


def _config(**fields: Any) -> Any:
    from pydantic import ValidationError

    from reviewstack.common.errors import InvalidArgument
    from reviewstack.evaluation.job import EvalConfig

    try:
        return EvalConfig(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidArgument(f"invalid options: {problems}") from None


def _run_local(config: Any) -> dict[str, Any]:
    from reviewstack.common.progress import ProgressDisplay
    from reviewstack.common.settings import StoreSettings
    from reviewstack.evaluation.job import run_evaluation
    from reviewstack.evaluation.summary import headline

    with ProgressDisplay() as progress:
        outcome = run_evaluation(config, StoreSettings(), progress.update)
    return {
        "eval_id": outcome.eval_id,
        "report_json": outcome.uris["report_json"],
        "report_html": outcome.uris["report_html"],
        "papers": len(outcome.report.get("papers", [])),
        "exclusions": len(outcome.report.get("exclusions", [])),
        "systems": headline(outcome.report),
    }


def _run_remote(request: Any, server: str, token: str | None) -> dict[str, Any]:
    """Send the evaluation to a server and follow its operation with the same progress display."""
    from google.protobuf import json_format

    from reviewstack.common.grpc import follow_operation, make_channel
    from reviewstack.v1 import evaluation_pb2, evaluation_pb2_grpc

    with make_channel(server, token) as channel:
        operation = evaluation_pb2_grpc.EvaluationStub(channel).Evaluate(request, timeout=60)
        result = follow_operation(
            channel, operation.id, evaluation_pb2.EvaluationResult(), f"evaluation on {server}"
        )
    return json_format.MessageToDict(
        result, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _number(value: float | str, spec: str = ".3f") -> str:
    """A metric for the table; undefined ones (NaN, "NaN" once through proto JSON) as a dash: a system
    whose reviews hold no points has no precision, and printing 0 would claim one."""
    number = float(value)
    return "—" if math.isnan(number) else format(number, spec)


def _show(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(summary))
        return
    table = Table(title=f"evaluation {summary['eval_id']} — {summary['papers']} papers")
    for column in ("system", "papers", "hits / paper", "recall (95% CI)", "precision (95% CI)", "F1"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for row in summary["systems"]:
        table.add_row(
            row["name"],
            str(row["papers"]),
            _number(row["hits"], ".2f"),
            f"{_number(row['recall'])} ({_number(row['recall_low'])}–{_number(row['recall_high'])})",
            f"{_number(row['precision'])} ({_number(row['precision_low'])}–{_number(row['precision_high'])})",
            _number(row["f1"]),
        )
    out.print(table)
    if summary["exclusions"]:
        out.print(f"[yellow]{summary['exclusions']} inputs left out[/]: their reasons are in report.json")
    out.print(f"report: {summary['report_html']}", soft_wrap=True)  # one line: a path to copy
