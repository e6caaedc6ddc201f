"""`reviewstack experiment …`: run an experiment spec end to end, or show where one stands.

    reviewstack experiment run experiments/seed-table.yaml --store ./store
    reviewstack experiment run experiments/seed-table.yaml --jobs 4 --concurrency 32     # a GPU with room
    reviewstack experiment run SPEC --server training=training:50051 --server evaluation=eval:50051
    reviewstack experiment run SPEC --only lora-pi --until review                          # one variant
    reviewstack experiment show seed-table --store ./store
    reviewstack experiment export seed-table lora-pi --out models/smollm2-135m-reviewer-lora

A rerun resumes: every step already made with the same inputs is reused (runner.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    no_args_is_help=True, help="Run experiments: datasets → training → reviews → evaluation → report."
)
out = Console()
err = Console(stderr=True)

StoreOpt = Annotated[str | None, typer.Option(help="store URI or directory (default REVIEWSTACK_STORE)")]


def _store(uri: str | None):
    from reviewstack.common.settings import StoreSettings
    from reviewstack.common.store import open_store

    settings = StoreSettings(store=uri) if uri else StoreSettings()
    store = open_store(settings.store, settings)
    store.check_writable()
    return store


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="experiment spec (YAML), e.g. experiments/seed-table.yaml")],
    store: StoreOpt = None,
    work: Annotated[
        Path | None, typer.Option(help="local folder for logs and paper files (default out/experiments/<id>)")
    ] = None,
    server: Annotated[
        list[str] | None, typer.Option(help="SERVICE=HOST:PORT (dataprep, training, evaluation); repeatable")
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="REVIEWSTACK_TOKEN", help="bearer token for --server")
    ] = None,
    jobs: Annotated[int, typer.Option(min=1, max=16, help="training runs / review batches at once")] = 1,
    concurrency: Annotated[
        int, typer.Option(min=1, max=256, help="reviews one engine decodes together")
    ] = 16,
    only: Annotated[
        list[str] | None, typer.Option(help="make only this run or system (and its inputs); repeatable")
    ] = None,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            help="leave out this run or system (a run's systems too); the report says so; repeatable"
        ),
    ] = None,
    until: Annotated[
        str, typer.Option(help="stop after this stage: data, train, review, eval, report")
    ] = "report",
    as_json: Annotated[bool, typer.Option("--json", help="print the experiment's state as JSON")] = False,
) -> None:
    """Run (or resume) an experiment and print where its report is."""
    from reviewstack.common.errors import InvalidArgument
    from reviewstack.experiment.runner import STAGES, ExperimentRunner, Options
    from reviewstack.experiment.spec import load_experiment
    from reviewstack.experiment.verbs import Verbs, parse_servers

    if until not in STAGES:
        raise InvalidArgument(f"--until {until!r}: use one of {', '.join(STAGES)}")
    experiment = load_experiment(spec)
    artifacts = _store(store)
    folder = work or Path("out/experiments") / experiment.id
    verbs = Verbs(
        store=artifacts.uri,
        logs=folder.resolve() / "logs",
        servers=parse_servers(server or []),
        env={"REVIEWSTACK_TOKEN": token} if token else {},
    )
    options = Options(
        jobs=jobs, concurrency=concurrency, only=tuple(only or ()), skip=tuple(skip or ()), until=until
    )  # type: ignore[arg-type]
    state = ExperimentRunner(experiment, artifacts, folder.resolve(), verbs, options, err).run()
    if as_json:
        out.print_json(json.dumps(state))
        return
    _print_steps(state)
    if "report" in state and not only and until == "report":
        out.print(f"report: {artifacts.uri_for(state['report']['html'])}", soft_wrap=True)


@app.command()
def show(
    experiment: Annotated[str, typer.Argument(help="experiment id")],
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the state as JSON")] = False,
) -> None:
    """What an experiment has made so far: each step, its artifact and how long it took."""
    from reviewstack.common.errors import NotFound

    artifacts = _store(store)
    key = f"experiments/{experiment}/state.json"
    if not artifacts.exists(key):
        raise NotFound(f"no experiment {experiment!r} in {artifacts.uri_for('experiments')}")
    state = json.loads(artifacts.get_bytes(key))
    if as_json:
        out.print_json(json.dumps(state))
    else:
        _print_steps(state)


@app.command()
def export(
    experiment: Annotated[str, typer.Argument(help="experiment id")],
    system: Annotated[str, typer.Argument(help="a trained (LoRA) system of the experiment, e.g. lora-pi")],
    folder: Annotated[
        Path, typer.Option("--out", help="folder to write the adapter and its model card into")
    ],
    store: StoreOpt = None,
    base_name: Annotated[
        str | None, typer.Option(help="the base model's published name (default: the embedded base's)")
    ] = None,
) -> None:
    """Write a system's adapter as a folder to ship: weights, adapter_config.json, the adapter card that
    reviewstack-merge reads and a README model card with its evaluation numbers."""
    from reviewstack.experiment.export import export_adapter

    card = export_adapter(_store(store), experiment, system, folder, base_name)
    hits = card.evaluation["hits"]
    out.print(
        f"{folder}: {card.base_model} + LoRA, PI ×{card.position_interpolation:g}, "
        f"{hits['mean']:.2f} hits per paper",
        soft_wrap=True,
    )


def _print_steps(state: dict) -> None:
    from reviewstack.experiment.report import planned_steps

    table = Table(title="experiment steps")
    for column in ("step", "artifact", "seconds", "finished"):
        table.add_column(column, overflow="fold")
    for name, step in sorted(planned_steps(state).items()):
        artifact = (
            step.get("dataset") or step.get("run") or step.get("reviews") or step.get("evaluation") or ""
        )
        # a candidate's step name, `train:lora[learning_rate=0.002]`, is not markup
        table.add_row(escape(name), artifact, str(step.get("seconds", "—")), step.get("finished", ""))
    out.print(table)
