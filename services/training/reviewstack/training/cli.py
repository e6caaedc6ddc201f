"""`reviewstack train …`: run a training job here, talk to a Training server, or print a run's Job.

    reviewstack train run spec.yaml lora.r=8 max_steps=50     # a local process, with progress
    reviewstack train submit spec.yaml --server training:50051 --gpus 8 --nodes 2 --watch
    reviewstack train status RUN_ID [--server …]              # without --server: read the store
    reviewstack train list [--server …]
    reviewstack train cancel RUN_ID --server …
    reviewstack train render-job spec.yaml --gpus 8 --nodes 2 --upload | kubectl apply -f -
    reviewstack train plan spec.yaml --gpus 4 --gpu-memory 79.1   # each layout's peak memory per GPU

SPEC is a JSON/YAML file or a store URI of a spec.json; `key=value` arguments override it (dotted keys
reach nested settings). A spec without run_id gets a fresh one, without output the store of
REVIEWSTACK_STORE (for `submit`: the server's).
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    no_args_is_help=True, help="Fine-tune a model: run, submit, follow and cancel training runs."
)
out = Console()
err = Console(stderr=True)

SpecArg = Annotated[str, typer.Argument(help="spec file (JSON/YAML) or store URI of a spec.json")]
OverridesArg = Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. lora.r=8")]
ServerOpt = Annotated[
    str | None, typer.Option(envvar="REVIEWSTACK_TRAINING_SERVER", help="Training server HOST:PORT")
]
TokenOpt = Annotated[str | None, typer.Option(envvar="REVIEWSTACK_TOKEN", help="bearer token")]
StoreOpt = Annotated[str | None, typer.Option(help="store to read runs/ from (default REVIEWSTACK_STORE)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the run as JSON")]
GpusOpt = Annotated[
    int | None, typer.Option(min=0, help="GPUs per node (default: 1 if there is one, else 0)")
]


def _settings(store: str | None = None):
    from reviewstack.training.settings import LauncherSettings

    return LauncherSettings(store=store) if store else LauncherSettings()


def _print_run(run, as_json: bool) -> None:
    from google.protobuf import json_format

    from reviewstack.training.summary import print_summary

    if as_json:
        out.print_json(json_format.MessageToJson(run))
    else:
        print_summary(out, run)


def _exit_for(run) -> None:
    """Exit status of a finished run: 0 succeeded, 2 refused input, 1 failed, 130 cancelled."""
    from reviewstack.training.summary import state_name

    state = state_name(run)
    if state == "failed":
        raise typer.Exit(2 if run.operation.error.code == 3 else 1)
    if state == "cancelled":
        raise typer.Exit(130)


@app.command()
def run(
    spec: SpecArg,
    overrides: OverridesArg = None,
    gpus: GpusOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train on this machine: check the spec and dataset, start the job, show progress, summarise."""
    from reviewstack.common.progress import ProgressDisplay
    from reviewstack.training.controller import TrainingController
    from reviewstack.training.launchers.local import LocalLauncher
    from reviewstack.training.specs import load_spec
    from reviewstack.training.summary import is_finished, show_progress

    settings = _settings()
    train_spec = load_spec(spec, overrides or [], settings.store, settings)
    launcher = LocalLauncher(settings)
    controller = TrainingController(settings, launcher)
    stops = _StopRequests()
    try:
        current = controller.submit(train_spec, gpus, 1)
        stops.armed = True  # from here on a stop request cancels the run, between two polls
        run_id = train_spec.run_id
        err.print(f"run {run_id}: writing to {current.uri}\nlog: {current.log}", soft_wrap=True)
        handled = 0
        with ProgressDisplay() as progress:
            while not is_finished(current):
                if stops.count > handled:
                    handled = stops.count
                    if handled == 1:
                        err.print("stopping: the job saves a checkpoint first (Ctrl-C again to kill it now)")
                        controller.cancel(run_id)
                    else:
                        launcher.cancel(run_id, grace_s=0)
                time.sleep(0.2)
                current = controller.get(run_id)
                show_progress(progress, current)
    finally:
        # whatever ends this command (an error, a crash of this process's code) stops a run still going
        controller.operations.shutdown(cancel_running=True)
        stops.restore()
    _print_run(current, as_json)
    _exit_for(current)


@app.command()
def submit(
    spec: SpecArg,
    overrides: OverridesArg = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    gpus: GpusOpt = None,
    nodes: Annotated[int | None, typer.Option(min=1, help="nodes (Kubernetes launcher)")] = None,
    request_id: Annotated[str | None, typer.Option(help="idempotency key (default: a fresh one)")] = None,
    watch: Annotated[bool, typer.Option(help="follow the run until it ends")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Send a run to a Training server (its launcher: a Kubernetes Job or a process there)."""
    from reviewstack.common.runspec import read_with_overrides
    from reviewstack.v1 import training_pb2

    data = read_with_overrides(spec, overrides or [], _settings())
    pb = _run_spec_pb(data)
    if gpus is not None:
        pb.resources.gpus_per_node = gpus
    if nodes is not None:
        pb.resources.nodes = nodes
    request = training_pb2.SubmitRunRequest(spec=pb, request_id=request_id or uuid.uuid4().hex)
    with _stub(server, token) as stub:
        accepted = stub.SubmitRun(request, timeout=120)
        if not watch:
            if as_json:
                _print_run(accepted, True)
            else:
                out.print(f"[bold]run {accepted.run_id} submitted[/] → {accepted.uri}", soft_wrap=True)
                out.print(f"follow it: reviewstack train status {accepted.run_id} --server {server} --watch")
                if accepted.log:
                    out.print(f"log: {accepted.log}", soft_wrap=True)
            return
        final = _follow(stub, accepted.run_id)
    _print_run(final, as_json)
    _exit_for(final)


@app.command()
def status(
    run_id: Annotated[str, typer.Argument(help="run id")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    store: StoreOpt = None,
    watch: Annotated[bool, typer.Option(help="follow the run until it ends")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Where a run stands: from a Training server, or read from the store's runs/<run-id>/."""
    from reviewstack.v1 import training_pb2

    if server:
        with _stub(server, token) as stub:
            current = (
                _follow(stub, run_id)
                if watch
                else stub.GetRun(training_pb2.GetRunRequest(run_id=run_id), timeout=30)
            )
    else:
        current = _store_controller(store).get(run_id)
    _print_run(current, as_json)


@app.command("list")
def list_runs(
    server: ServerOpt = None, token: TokenOpt = None, store: StoreOpt = None, as_json: JsonOpt = False
) -> None:
    """Runs of a Training server, or those found in a store's runs/."""
    from google.protobuf import json_format

    from reviewstack.training.summary import runs_table
    from reviewstack.v1 import training_pb2

    if server:
        with _stub(server, token) as stub:
            runs = list(stub.ListRuns(training_pb2.ListRunsRequest(), timeout=60).runs)
    else:
        runs = _store_controller(store).list()
    if as_json:
        out.print_json(json.dumps([json_format.MessageToDict(r) for r in runs]))
    else:
        out.print(runs_table(runs))


@app.command()
def cancel(
    run_id: Annotated[str, typer.Argument(help="run id")], server: ServerOpt = None, token: TokenOpt = None
) -> None:
    """Stop a run on a Training server (it saves a checkpoint first; resubmitting resumes it)."""
    from reviewstack.common.errors import InvalidArgument
    from reviewstack.training.summary import state_name
    from reviewstack.v1 import training_pb2

    if not server:
        raise InvalidArgument("cancel needs --server (a local `train run` stops with Ctrl-C)")
    with _stub(server, token) as stub:
        current = stub.CancelRun(training_pb2.CancelRunRequest(run_id=run_id), timeout=60)
    out.print(f"run {run_id}: {state_name(current)} — {current.operation.progress.message}", soft_wrap=True)


@app.command("render-job")
def render_job(
    spec: SpecArg,
    overrides: OverridesArg = None,
    gpus: Annotated[
        int | None, typer.Option(min=0, help="GPUs per node (default REVIEWSTACK_K8S_GPUS_PER_NODE)")
    ] = None,
    nodes: Annotated[
        int, typer.Option(min=1, help="nodes; >1 renders an Indexed Job + headless Service")
    ] = 1,
    namespace: Annotated[
        str | None, typer.Option(help="namespace (default REVIEWSTACK_K8S_NAMESPACE)")
    ] = None,
    image: Annotated[
        str | None, typer.Option(help="training job image (default REVIEWSTACK_K8S_IMAGE)")
    ] = None,
    upload: Annotated[bool, typer.Option(help="also write the spec to runs/<run-id>/spec.json")] = False,
) -> None:
    """Print the Kubernetes Job (YAML) the kubernetes launcher would create for SPEC."""
    from dataclasses import replace

    from reviewstack.common.store import open_store
    from reviewstack.training.manifests import JobTemplate, render_run, to_yaml
    from reviewstack.training.preflight import check_cluster_run
    from reviewstack.training.specs import Resources, load_spec
    from reviewstack.training.status import run_prefix

    settings = _settings()
    train_spec = load_spec(spec, overrides or [], settings.store, settings)
    per_node = (0 if train_spec.device == "cpu" else settings.k8s_gpus_per_node) if gpus is None else gpus
    resources = Resources(gpus_per_node=per_node, nodes=nodes)
    check_cluster_run(train_spec, per_node, nodes)
    template = JobTemplate.from_settings(settings, namespace)
    if image:
        template = replace(template, image=image)
    store = open_store(train_spec.output, settings)
    key = f"{run_prefix(train_spec.run_id)}/spec.json"
    spec_uri = store.uri_for(key)
    if upload:
        from reviewstack.training.controller import create_spec, refuse_other_spec

        if refuse_other_spec(store, train_spec) is None:  # ALREADY_EXISTS when the id names another spec
            create_spec(store, train_spec)
            err.print(f"spec written to {spec_uri}", soft_wrap=True)
        else:
            err.print(f"{spec_uri} already holds this spec (the Job resumes the run)", soft_wrap=True)
    else:
        err.print(f"the Job reads {spec_uri}: write it there first (or pass --upload)", soft_wrap=True)
    print(to_yaml(render_run(train_spec.run_id, spec_uri, template, resources)), end="")


@app.command()
def plan(
    spec: SpecArg,
    overrides: OverridesArg = None,
    gpus: Annotated[int, typer.Option(min=1, help="GPUs per node")] = 1,
    nodes: Annotated[int, typer.Option(min=1, help="nodes")] = 1,
    gpu_memory: Annotated[
        float, typer.Option(min=1, help="one GPU's memory in GiB as torch reports it (80 GB cards: 79.1)")
    ] = 79.1,
    model_config: Annotated[
        Path | None, typer.Option(help="the base model's config.json (default: base_model/config.json)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Each layout's predicted peak memory per GPU for SPEC on these GPUs, and the one `layout=auto` takes.

    The training job makes the same prediction at its start (with the GPUs it finds) and writes it,
    with the peaks it measured, to runs/<run-id>/layout.json. Exit status 1 when no layout fits."""
    from reviewstack.common.train_memory import ModelShape, Topology
    from reviewstack.common.train_memory import plan as plan_layouts
    from reviewstack.training.specs import load_spec

    settings = _settings()
    train_spec = load_spec(spec, overrides or [], settings.store, settings)
    if model_config is not None:
        shape = ModelShape.from_config(_read_json(model_config), str(model_config))
    else:
        shape = ModelShape.from_model_dir(train_spec.base_model)
    topology = Topology(gpus * nodes, gpus, gpu_memory)
    # Liger's kernels are in the training image; `liger: off` is the one way to go without them
    layouts = plan_layouts(shape, train_spec, topology, liger=train_spec.liger != "off", strict=False)
    if as_json:
        out.print_json(json.dumps(layouts.as_dict()))
    else:
        _print_plan(layouts, shape)
    if layouts.chosen is None:
        raise typer.Exit(1)


def _print_plan(layouts, shape) -> None:
    from rich.table import Table

    topology = layouts.topology
    table = Table(
        title=f"peak memory per GPU: {shape.parameters / 1e9:.2f}B parameters on {topology.gpus} GPU(s) "
        f"({topology.gpus_per_node} per node) of {topology.gpu_memory_gib:.1f} GiB, "
        f"{topology.usable_gib:.1f} usable"
    )
    for column in ("layout", "weights", "trainable", "activations", "buffers", "peak / GPU", ""):
        table.add_column(column, justify="left" if column in ("layout", "") else "right")
    for name, p in layouts.predictions.items():
        verdict = "← auto" if name == layouts.chosen else layouts.unavailable.get(name, "fits")
        cells = [f"{v:.1f}" for v in (p.weights, p.trainable, p.activations, p.buffers, p.total)]
        table.add_row(name, *cells, verdict, style="bold" if name == layouts.chosen else None)
    out.print(table)
    if layouts.chosen is None:
        err.print(
            "no layout runs this spec on these GPUs: more GPUs, shorter sequences or LoRA", soft_wrap=True
        )
    for note in layouts.notes:
        err.print(note, soft_wrap=True)


def _read_json(path: Path) -> dict:
    from reviewstack.common.errors import InvalidArgument

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read {path} as a JSON model config: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path} holds no JSON object (a model's config.json)")
    return data


# ---- helpers -------------------------------------------------------------------------------------------
class _StopRequests:
    """SIGINT (Ctrl-C) and SIGTERM (a supervisor, `timeout`) while a run is followed: counted, and the
    command stops the run itself — without this the job, in its own session, would outlive the command.
    Before `armed` (checks, launch) they interrupt as usual. A SIGINT that the parent shell ignores (a
    background job of a script) stays ignored."""

    def __init__(self) -> None:
        self.count = 0
        self.armed = False
        self._previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self.armed:
            raise KeyboardInterrupt
        self.count += 1

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _run_spec_pb(data: dict):
    from google.protobuf import struct_pb2

    from reviewstack.training.specs import TOP_LEVEL
    from reviewstack.v1 import training_pb2

    config = struct_pb2.Struct()
    config.update({k: v for k, v in data.items() if k not in TOP_LEVEL})
    return training_pb2.RunSpec(config=config, **{k: str(data[k]) for k in TOP_LEVEL if data.get(k)})


class _stub:
    """A Training stub on a channel that carries the token; closes the channel on exit."""

    def __init__(self, server: str | None, token: str | None) -> None:
        from reviewstack.common.errors import InvalidArgument

        if not server:
            raise InvalidArgument("--server HOST:PORT (or REVIEWSTACK_TRAINING_SERVER) is required")
        self.server, self.token = server, token

    def __enter__(self):
        from reviewstack.common.grpc import make_channel
        from reviewstack.v1 import training_pb2_grpc

        self.channel = make_channel(self.server, self.token)
        return training_pb2_grpc.TrainingStub(self.channel)

    def __exit__(self, *exc: object) -> None:
        self.channel.close()


def _follow(stub, run_id: str):
    """Follow WatchRun with the progress display; returns the run as it ended."""
    import grpc

    from reviewstack.common.grpc import error_from_rpc
    from reviewstack.common.progress import ProgressDisplay
    from reviewstack.training.summary import show_progress
    from reviewstack.v1 import training_pb2

    current = None
    with ProgressDisplay() as progress:
        try:
            for current in stub.WatchRun(training_pb2.GetRunRequest(run_id=run_id)):
                show_progress(progress, current)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
    if current is None:
        current = stub.GetRun(training_pb2.GetRunRequest(run_id=run_id), timeout=30)
    return current


def _store_controller(store: str | None):
    """A controller that only reads: runs in the store (no launcher state, nothing started)."""
    from reviewstack.training.controller import TrainingController
    from reviewstack.training.launchers.local import LocalLauncher

    settings = _settings(store)
    return TrainingController(settings, LocalLauncher(settings))
