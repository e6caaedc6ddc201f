"""`reviewstack data …`: build datasets locally (default) or on a DataPrep server (`--server`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from reviewstack.dataprep.config import PaperVersionMode

app = typer.Typer(
    no_args_is_help=True, help="Build fine-tuning datasets from papers and their human reviews."
)
out = Console()

SourceOpt = Annotated[
    list[str],
    typer.Option("--source", help="folder or store URI with papers/ and reviews/; repeat for several"),
]


@app.command()
def build(
    source: SourceOpt,
    name: Annotated[str, typer.Option(help="dataset name: datasets/<name>/<version>/")],
    paper_version: Annotated[
        PaperVersionMode,
        typer.Option(
            help="the paper texts are early (reviewed) or late (camera-ready) versions; "
            "'decision' = late for accepted papers, early for the rest"
        ),
    ],
    out_uri: Annotated[
        str,
        typer.Option("--out", help="store URI or directory to publish in (with --server: default its store)"),
    ] = "",
    aspects: Annotated[str, typer.Option(help="aspect schema: 7 or 4")] = "7",
    distiller: Annotated[str, typer.Option(help="embedded (rules + embeddings) or llm")] = "embedded",
    llm_endpoint: Annotated[
        str,
        typer.Option(
            help="--distiller llm: an OpenAI-compatible base URL; with --server, the name of an endpoint its "
            "operator configured (default: the server's)"
        ),
    ] = "",
    llm_model: Annotated[str, typer.Option(help="model name for --distiller llm (not with --server)")] = "",
    max_prompt_length: Annotated[int, typer.Option(help="prompt token limit")] = 11_138,
    max_response_length: Annotated[int, typer.Option(help="response token limit")] = 1_150,
    split: Annotated[str, typer.Option(help="train,val,test shares")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="seed of the split")] = 0,
    tokenizer: Annotated[
        str | None,
        typer.Option(help="tokenizer directory (default: Llama-3); with --server, a name the server knows"),
    ] = None,
    version: Annotated[str | None, typer.Option(help="version label (default: content hash)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing version")] = False,
    drop_appendix: Annotated[bool, typer.Option(help="drop appendices from the papers")] = False,
    server: Annotated[str | None, typer.Option(help="run on a DataPrep server at HOST:PORT")] = None,
    token: Annotated[str | None, typer.Option(envvar="REVIEWSTACK_TOKEN", help="bearer token")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Build one dataset version: clean papers, distil reviews into aspects, tokenize, split, publish."""
    from reviewstack.common.aspects import AspectSchema
    from reviewstack.common.errors import InvalidArgument
    from reviewstack.common.store.scope import for_server
    from reviewstack.dataprep.config import BuildConfig

    try:
        shares = tuple(float(x) for x in split.split(","))
    except ValueError:
        raise InvalidArgument(f"--split {split!r}: expected three numbers like 0.8,0.1,0.1") from None
    if server is None and not out_uri:
        raise InvalidArgument("--out is required: the store URI or directory to publish the dataset in")
    if server is not None and distiller == "llm" and llm_model:
        raise InvalidArgument(
            "--llm-model is the server operator's choice: name one of its endpoints with --llm-endpoint"
        )
    # on a server the llm distiller is the server's: its endpoint goes by name ("" = the server's default)
    remote_llm = llm_endpoint if server is not None and distiller == "llm" else None
    config = _validated(
        BuildConfig,
        sources=[for_server(s) for s in source] if server else source,
        output=for_server(out_uri) if server else out_uri,
        name=name,
        paper_version=paper_version,
        aspect_schema=AspectSchema.parse(aspects),
        distiller="embedded" if remote_llm is not None else distiller,
        llm_endpoint="" if remote_llm is not None else llm_endpoint,
        llm_model="" if remote_llm is not None else llm_model,
        max_prompt_length=max_prompt_length,
        max_response_length=max_response_length,
        split=shares,
        seed=seed,
        tokenizer=tokenizer,
        version=version,
        overwrite=overwrite,
        drop_appendix=drop_appendix,
    )
    summary = _build_remote(config, server, token, remote_llm) if server else _build_local(config)
    if as_json:
        out.print_json(json.dumps(summary))
    else:
        _print_summary(summary)


@app.command("list")
def list_datasets(
    store: Annotated[str, typer.Option(help="store URI or directory")],
    name: Annotated[str | None, typer.Option(help="only this dataset")] = None,
) -> None:
    """List the published datasets of a store."""
    from reviewstack.common.settings import StoreSettings
    from reviewstack.common.store import open_store

    artifacts = open_store(store, StoreSettings())
    table = Table("name", "version", "records", "train/val/test", "created")
    for prefix in artifacts.list_published(f"datasets/{name}" if name else "datasets"):
        manifest = artifacts.read_manifest(prefix)
        counts = manifest.get("counts", {})
        table.add_row(
            manifest.get("name", ""),
            manifest.get("version", ""),
            str(counts.get("records", "")),
            f"{counts.get('train')}/{counts.get('val')}/{counts.get('test')}",
            manifest.get("created_at", ""),
        )
    out.print(table)


@app.command()
def show(
    store: Annotated[str, typer.Option(help="store URI or directory")],
    name: Annotated[str, typer.Argument(help="dataset name")],
    version: Annotated[str, typer.Argument(help="dataset version")],
) -> None:
    """Print a dataset's manifest."""
    from reviewstack.common.settings import StoreSettings
    from reviewstack.common.store import open_store

    out.print_json(json.dumps(open_store(store, StoreSettings()).read_manifest(f"datasets/{name}/{version}")))


def _validated(model, **fields):
    from pydantic import ValidationError

    from reviewstack.common.errors import InvalidArgument

    try:
        return model(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidArgument(f"invalid options: {problems}") from None


def _build_local(config) -> dict:
    from reviewstack.common.progress import ProgressDisplay
    from reviewstack.common.settings import StoreSettings
    from reviewstack.dataprep.build import build_dataset

    with ProgressDisplay() as progress:
        result = build_dataset(config, StoreSettings(), progress)
    return {
        "name": result.name,
        "version": result.version,
        "uri": result.uri,
        "reused": result.reused,
        "manifest": result.manifest_ref.uri,
        "counts": result.manifest["counts"],
        "tokens": result.manifest["tokens"],
        "targets": result.manifest["targets"],
        "skipped": result.skipped,
    }


def _build_remote(config, server: str, token: str | None, llm_endpoint: str | None) -> dict:
    """Send the build to a DataPrep server and follow its operation with the same progress display."""
    from reviewstack.common.grpc import follow_operation, make_channel
    from reviewstack.dataprep.service import config_to_request
    from reviewstack.v1 import dataprep_pb2, dataprep_pb2_grpc

    with make_channel(server, token) as channel:
        stub = dataprep_pb2_grpc.DataPrepStub(channel)
        request = config_to_request(config, llm_endpoint or "")
        if llm_endpoint is not None:  # the llm distiller, at the server's default endpoint if none named
            request.distiller.kind = dataprep_pb2.DistillerSpec.KIND_LLM
        operation = stub.BuildDataset(request, timeout=60)
        result = follow_operation(
            channel, operation.id, dataprep_pb2.BuildDatasetResult(), f"build on {server}"
        )
        reply = stub.GetDataset(
            dataprep_pb2.GetDatasetRequest(store=config.output, name=result.name, version=result.version),
            timeout=30,
        )
    manifest = json.loads(reply.manifest_json)
    return {
        "name": result.name,
        "version": result.version,
        "uri": result.uri,
        "reused": False,
        "manifest": result.manifest.uri,
        "counts": manifest["counts"],
        "tokens": manifest["tokens"],
        "targets": manifest["targets"],
        "skipped": manifest["skipped"],
    }


def _print_summary(summary: dict) -> None:
    counts, tokens, targets = summary["counts"], summary["tokens"], summary["targets"]
    verb = "found (identical inputs and settings)" if summary["reused"] else "published"
    out.print(f"[bold green]dataset {summary['name']} {summary['version']} {verb}[/]")
    table = Table("", "value", show_header=False)
    table.add_row(
        "records (train/val/test)",
        f"{counts['records']} ({counts['train']}/{counts['val']}/{counts['test']})",
    )
    table.add_row("reviews / human points", f"{counts['reviews']} / {counts['human_points']}")
    for kind in ("prompt", "response"):
        t = tokens[kind]
        table.add_row(f"{kind} tokens p50/p95/max", f"{t['p50']:.0f} / {t['p95']:.0f} / {t['max']:.0f}")
    table.add_row("items per record (mean)", f"{targets['items_per_record']['mean']}")
    table.add_row("empty aspects (share)", f"{targets['empty_aspect_share']:.1%}")
    table.add_row("skipped inputs", str(len(summary["skipped"])))
    out.print(table)
    for entry in summary["skipped"][:20]:
        out.print(f"  [yellow]skipped[/] {entry['path']}: {entry['reason']}", soft_wrap=True)
    if len(summary["skipped"]) > 20:
        out.print(f"  … and {len(summary['skipped']) - 20} more (see the manifest's 'skipped')")
    out.print(f"dataset: {summary['uri']}\nmanifest: {summary['manifest']}", soft_wrap=True)
