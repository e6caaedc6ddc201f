"""`reviewstack demo`: the whole method on one machine, through the gRPC services.

bundled sample → dataset (DataPrep service) → LoRA + Position-Interpolation fine-tune of the embedded
SmolLM2-135M-Instruct (Training service, local launcher) → the merged model served by the embedded
engine behind the Review service → the sample's test papers reviewed at λ = 0 and at λ > 0 → both
evaluated against the human reviews and compared (Evaluation service) → report.html.

Each service runs as its own process on loopback with a bearer token, as it would in a cluster, and each
stage is the CLI verb a user would type (`reviewstack data build --server …`), so the progress shown is
theirs. Nothing here imports a service: only their entry points and command lines are used. A second run
reuses what the first finished (the dataset version, a succeeded training run, papers already reviewed).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from reviewstack.common import errors
from reviewstack.common.grpc.client import make_channel, wait_until_serving

console = Console()
REPO_SAMPLE = Path("data/neurips2025-sample")
TRAIN_CONFIG = Path("training-job/configs/smollm2-cpu-pi.yaml")
RUN_ID = "demo-smollm2-pi"
DATASET_NAME = "neurips2025-sample"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _program(name: str) -> str:
    """A console script of this environment (the venv's bin/ first, then PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise errors.FailedPrecondition(
            f"{name} is not installed in this environment: run `make install` (it installs every service)"
        )
    return found


class Stack:
    """The services' processes: started on free loopback ports, logged to files, stopped on exit."""

    def __init__(self, work: Path, store: Path, token: str) -> None:
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.token = token
        self._processes: list[tuple[str, subprocess.Popen]] = []

    def start(self, program: str, env: dict[str, str]) -> int:
        """Start `program` on a free loopback port (its settings come from the environment); the port."""
        port = _free_port()
        log = (self.logs / f"{program}.log").open("ab")
        settings = {
            "REVIEWSTACK_HOST": "127.0.0.1",
            "REVIEWSTACK_PORT": str(port),
            "REVIEWSTACK_STORE": str(self.store),
            "REVIEWSTACK_AUTH_TOKEN": self.token,
            "REVIEWSTACK_LOG_FORMAT": "json",
        }
        process = subprocess.Popen(
            [_program(program)],
            env={**os.environ, **settings, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the demo, which stops them in order
        )
        self._processes.append((program, process))
        return port

    def wait_grpc(self, program: str, port: int, timeout: float = 180.0) -> str:
        target = f"127.0.0.1:{port}"
        self._check_alive(program)
        with make_channel(target, self.token) as channel:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    wait_until_serving(channel, timeout=5.0)
                    return target
                except errors.Unavailable:
                    self._check_alive(program)
                    if time.monotonic() > deadline:
                        raise self._failed(program, f"not serving after {timeout:.0f} s") from None

    def wait_http(self, program: str, port: int, timeout: float = 300.0) -> str:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive(program)
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        return url
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise self._failed(program, f"not healthy after {timeout:.0f} s")
            time.sleep(1.0)

    def _check_alive(self, program: str) -> None:
        for name, process in self._processes:
            if name == program and process.poll() is not None:
                raise self._failed(program, f"exited with status {process.returncode}")

    def _failed(self, program: str, what: str) -> errors.Unavailable:
        log = self.logs / f"{program}.log"
        tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
        return errors.Unavailable(f"{program} {what}; its log is {log}:\n" + "\n".join(tail))

    def stop(self) -> None:
        for _, process in reversed(self._processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in reversed(self._processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Stages:
    """Numbered stage headers with the time each took, so a long run shows where it is."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.number = 0
        self.started = time.monotonic()
        self.timings: list[tuple[str, float]] = []

    @contextmanager
    def stage(self, title: str) -> Iterator[None]:
        self.number += 1
        console.rule(f"[bold]{self.number}/{self.total} · {title}")
        began = time.monotonic()
        yield
        took = time.monotonic() - began
        self.timings.append((title, took))
        console.print(f"[dim]{title}: {took:.0f} s (total {time.monotonic() - self.started:.0f} s)[/]")


def _cli(*args: str, token: str) -> None:
    """One `reviewstack …` command, its output shown as it comes; a failure stops the demo."""
    command = [_program("reviewstack"), *args]
    console.print(f"[cyan]$ reviewstack {' '.join(args)}[/]")
    result = subprocess.run(command, env={**os.environ, "REVIEWSTACK_TOKEN": token}, check=False)
    if result.returncode != 0:
        raise errors.ReviewStackError(f"`reviewstack {args[0]} {args[1]}` failed (exit {result.returncode})")


def _latest(pattern: str, root: Path) -> Path:
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise errors.NotFound(f"nothing matches {pattern} under {root}")
    return found[-1]


def _test_papers(dataset: Path, sample: Path, into: Path) -> list[str]:
    """The dataset's test split, as paper files the review CLI can read."""
    ids = [json.loads(line)["paper_id"] for line in (dataset / "test.jsonl").read_text().splitlines() if line]
    into.mkdir(parents=True, exist_ok=True)
    for paper_id in ids:
        source = next((sample / "papers").glob(f"{paper_id}.*"))
        shutil.copyfile(source, into / source.name)
    return ids


def _succeeded(run: Path) -> bool:
    status = run / "status.json"
    return status.exists() and json.loads(status.read_text()).get("state") == "succeeded"


def demo(
    out: Annotated[Path, typer.Option(help="working folder: store, logs, the reviewed papers")] = Path(
        "out/demo"
    ),
    sample: Annotated[Path, typer.Option(help="source folder of papers and reviews")] = REPO_SAMPLE,
    steps: Annotated[int, typer.Option(min=1, help="optimizer steps of the fine-tune")] = 14,
    batch_size: Annotated[int, typer.Option(min=1, help="sequences per optimizer step")] = 4,
    penalty: Annotated[float, typer.Option(min=0.0, help="the λ > 0 the reviews are compared at")] = 2.0,
    max_new_tokens: Annotated[int, typer.Option(min=16, help="longest review, in tokens")] = 384,
    temperature: Annotated[
        float, typer.Option(min=0.0, help="both systems' temperature (top-p 0.9, seed 0; 0 = greedy)")
    ] = 0.7,
    repetition_penalty: Annotated[
        float, typer.Option(min=1.0, help="TGI repetition penalty of both systems' decoding (1 = off)")
    ] = 1.0,
    fresh: Annotated[bool, typer.Option(help="start over instead of reusing a previous run's work")] = False,
) -> None:
    """Run the whole method on this machine through the gRPC services and print where the report is."""
    from reviewstack.common.embedded_model import materialise_embedded_model

    if not (sample / "papers").is_dir():
        raise errors.InvalidArgument(f"{sample} has no papers/ folder: pass --sample a source folder")
    if fresh and out.exists():
        shutil.rmtree(out)
    out = out.resolve()
    store = out / "store"
    store.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    stages = Stages(5)
    # the services run in sessions of their own (a Ctrl-C reaches only this process), so a SIGTERM must
    # unwind through the cleanup below like a Ctrl-C does, or they would outlive the demo
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with ExitStack() as cleanup:
        stack = Stack(out, store, token)
        cleanup.callback(stack.stop)

        with stages.stage("dataset: papers + human reviews → 7-aspect targets and ground truth"):
            # the server reads raw inputs only from the store and the folders its operator lists
            roots = {"REVIEWSTACK_READ_ONLY_ROOTS": json.dumps([str(sample.resolve())])}
            dataprep = stack.wait_grpc("reviewstack-dataprep", stack.start("reviewstack-dataprep", roots))
            _cli(
                "data", "build", "--server", dataprep, "--source", str(sample.resolve()),
                "--paper-version", "decision", "--out", str(store), "--name", DATASET_NAME,
                token=token,
            )  # fmt: skip
            dataset = _latest(f"datasets/{DATASET_NAME}/*/manifest.json", store).parent

        run = store / "runs" / RUN_ID
        with stages.stage("fine-tune: SmolLM2-135M-Instruct, LoRA r=16, PI 8k → 12k, CPU-sized"):
            if _succeeded(run) and (run / "merged").is_dir():
                console.print(f"run {RUN_ID} already succeeded in {run}: reused (--fresh starts over)")
            else:
                base = materialise_embedded_model()
                local_runs = {
                    "REVIEWSTACK_LOCAL_LOG_DIR": str(stack.logs / "runs"),
                    "REVIEWSTACK_BASE_MODEL_ROOTS": json.dumps([str(base)]),
                }
                training = stack.wait_grpc(
                    "reviewstack-training", stack.start("reviewstack-training", local_runs)
                )
                _cli(
                    "train", "submit", str(TRAIN_CONFIG.resolve()), f"run_id={RUN_ID}",
                    f"dataset={dataset}", f"base_model={base}", f"output={store}",
                    f"max_steps={steps}", f"effective_batch_size={batch_size}",
                    f"eval_steps={max(1, steps // 2)}", f"save_steps={max(1, steps // 2)}",
                    "--server", training, "--watch",
                    token=token,
                )  # fmt: skip
            if not _succeeded(run):
                raise errors.FailedPrecondition(f"the training run did not succeed: see {run}/status.json")

        merged = run / "merged"
        with stages.stage("serve: the merged model on the embedded engine, behind the Review service"):
            config = json.loads((run / "spec.json").read_text())
            prompt = config["max_prompt_length"] + 32  # the engine may tokenize the text a little longer
            engine = {
                "REVIEWSTACK_MODEL": str(merged),
                "REVIEWSTACK_MAX_INPUT_TOKENS": str(prompt),
                "REVIEWSTACK_MAX_TOTAL_TOKENS": str(prompt + max_new_tokens),
                "REVIEWSTACK_MAX_BATCH_SIZE": "4",  # the static KV cache: 4 slots of this length
            }
            backend = stack.wait_http("reviewstack-generation", stack.start("reviewstack-generation", engine))
            review = stack.wait_grpc(
                "reviewstack-review",
                stack.start(
                    "reviewstack-review",
                    {
                        "REVIEWSTACK_BACKEND_URL": backend,
                        "REVIEWSTACK_BACKEND_AUTH_TOKEN": stack.token,  # the engine checks it too
                        "REVIEWSTACK_TOKENIZER": str(merged),
                        # the lineage names the run in the store, not a directory of this machine
                        "REVIEWSTACK_SERVED_MODEL": f"runs/{RUN_ID}/merged",
                        "REVIEWSTACK_MAX_PROMPT_LENGTH": str(config["max_prompt_length"]),
                        "REVIEWSTACK_MAX_NEW_TOKENS": str(max_new_tokens),
                    },
                ),
            )
            console.print(f"engine {backend} · review service {review}")

        systems = {"lambda-0": 0.0, f"lambda-{penalty:g}": penalty}
        sampling = ("--temperature", f"{temperature:g}", "--top-p", "0.9", "--seed", "0")
        sampling = sampling if temperature else ()
        with stages.stage(f"review: the test papers at λ = 0 and λ = {penalty:g}"):
            papers = out / "test-papers"
            ids = _test_papers(dataset, sample, papers)
            console.print(f"{len(ids)} test papers: {', '.join(ids)}")
            for system, value in systems.items():
                _cli(
                    "review", "--batch", str(papers), "--system", f"demo-{system}", "--store", str(store),
                    "--server", review, "--refusal-penalty", f"{value:g}",
                    "--repetition-penalty", f"{repetition_penalty:g}",
                    *sampling,
                    token=token,
                )  # fmt: skip

        with stages.stage("evaluate: hits and precision against the human reviews, λ compared pairwise"):
            evaluation = stack.wait_grpc(
                "reviewstack-evaluation", stack.start("reviewstack-evaluation", {}), timeout=300.0
            )
            _cli(
                "eval", "run", "--server", evaluation,
                *(a for name in systems for a in ("--system", f"{name}={store}/reviews/demo-{name}")),
                "--human", str(dataset), "--out", str(store),
                token=token,
            )  # fmt: skip
            report = _latest("evaluations/*/report.html", store)

    console.rule(f"[bold]done in {time.monotonic() - stages.started:.0f} s")
    for title, took in stages.timings:
        console.print(f"  {took:6.0f} s  {title}")
    console.print(f"logs of the services: {stack.logs}", soft_wrap=True)
    console.print(f"[bold green]report:[/] {report}", soft_wrap=True)  # one line: a path to copy
