"""`reviewstack demo`: the whole method on one machine, through the gRPC services.

bundled sample → dataset (DataPrep service) → a short LoRA + Position-Interpolation fine-tune of the
embedded SmolLM2-135M-Instruct (Training service, local launcher), which shows the training machinery →
its merged model, and the shipped reviewer (the seed table's best adapter, `models/`, merged onto the
same base at start-up), each served by the embedded engine behind a Review service → the sample's test
papers reviewed by the CPU fine-tune, and by the shipped reviewer at λ = 0 and at λ > 0 → all three
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
SHIPPED_REVIEWER = Path("models/smollm2-135m-reviewer-lora")
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

    def start(self, program: str, env: dict[str, str], name: str | None = None) -> int:
        """Start `program` on a free loopback port (its settings come from the environment); the port.
        `name` (default: the program's) names its log and its failures: two engines keep theirs apart."""
        port = _free_port()
        name = name or program
        log = (self.logs / f"{name}.log").open("ab")
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
        self._processes.append((name, process))
        return port

    def serve(self, name: str, model: Path, lineage: str, max_prompt: int, max_new: int, slots: int) -> str:
        """`model` on the embedded engine behind a Review service of its own; the Review service's
        address. `lineage` is what its reviews name as their model (a store key, not a local path)."""
        prompt = max_prompt + 32  # the engine may tokenize the text a little longer
        engine = {
            "REVIEWSTACK_MODEL": str(model),
            "REVIEWSTACK_MAX_INPUT_TOKENS": str(prompt),
            "REVIEWSTACK_MAX_TOTAL_TOKENS": str(prompt + max_new),
            "REVIEWSTACK_MAX_BATCH_SIZE": str(slots),  # the static KV cache: this many slots of that length
        }
        backend = self.wait_http(
            f"{name}-engine", self.start("reviewstack-generation", engine, f"{name}-engine")
        )
        review = {
            "REVIEWSTACK_BACKEND_URL": backend,
            "REVIEWSTACK_BACKEND_AUTH_TOKEN": self.token,  # the engine checks it too
            "REVIEWSTACK_TOKENIZER": str(model),
            "REVIEWSTACK_SERVED_MODEL": lineage,
            "REVIEWSTACK_MAX_PROMPT_LENGTH": str(max_prompt),
            "REVIEWSTACK_MAX_NEW_TOKENS": str(max_new),
        }
        address = self.wait_grpc(f"{name}-review", self.start("reviewstack-review", review, f"{name}-review"))
        console.print(f"{name}: engine {backend} · review service {address}")
        return address

    def wait_grpc(self, program: str, port: int, timeout: float = 180.0) -> str:
        """`program` (its start name) serving gRPC health on `port`; its address."""
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
    _run("reviewstack", *args, env={"REVIEWSTACK_TOKEN": token})


def _run(program: str, *args: str, env: dict[str, str] | None = None) -> None:
    console.print(f"[cyan]$ {program} {' '.join(args)}[/]", soft_wrap=True)
    result = subprocess.run([_program(program), *args], env={**os.environ, **(env or {})}, check=False)
    if result.returncode != 0:
        raise errors.ReviewStackError(f"`{program} {' '.join(args[:2])}` failed (exit {result.returncode})")


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


def _sampling(temperature: float, top_p: float, repetition_penalty: float) -> tuple[str, ...]:
    """`reviewstack review` decoding options; seed 0, so a rerun writes the same reviews."""
    sampled = ("--temperature", f"{temperature:g}", "--top-p", f"{top_p:g}", "--seed", "0")
    return (*(sampled if temperature else ()), "--repetition-penalty", f"{repetition_penalty:g}")


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
        float,
        typer.Option(
            min=0.0,
            help="the CPU fine-tune's temperature (top-p 0.9, seed 0; 0 = greedy); the reviewer's too "
            "unless its card records the decoding it was evaluated with",
        ),
    ] = 0.7,
    repetition_penalty: Annotated[
        float,
        typer.Option(min=1.0, help="TGI repetition penalty (1 = off), as --temperature says whose"),
    ] = 1.0,
    fresh: Annotated[bool, typer.Option(help="start over instead of reusing a previous run's work")] = False,
    reviewer: Annotated[
        Path | None,
        typer.Option(
            help="an adapter folder (`reviewstack experiment export`) to review with beside the CPU "
            f"fine-tune, merged at start-up (default: {SHIPPED_REVIEWER} when the checkout ships one)"
        ),
    ] = None,
    reviewer_prompt: Annotated[
        int, typer.Option(min=256, help="the shipped reviewer's prompt budget: the paper is cut to fit")
    ] = 2048,
    reviewer_max_new_tokens: Annotated[
        int, typer.Option(min=0, help="the shipped reviewer's longest review (0: its card's, 1,150)")
    ] = 0,
) -> None:
    """Run the whole method on this machine through the gRPC services and print where the report is."""
    from reviewstack.common.embedded_model import materialise_embedded_model

    if not (sample / "papers").is_dir():
        raise errors.InvalidArgument(f"{sample} has no papers/ folder: pass --sample a source folder")
    if reviewer is None and (SHIPPED_REVIEWER / "reviewstack-adapter.json").is_file():
        reviewer = SHIPPED_REVIEWER
    if reviewer is not None and not (reviewer / "reviewstack-adapter.json").is_file():
        raise errors.InvalidArgument(
            f"--reviewer {reviewer} is not an adapter folder (no reviewstack-adapter.json): export one with "
            "`reviewstack experiment export`"
        )
    adapter = reviewer.resolve() if reviewer is not None else None
    if adapter is None:
        console.print(
            f"[yellow]no reviewer adapter at {SHIPPED_REVIEWER}: the CPU fine-tune reviews alone[/]"
        )
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

        with stages.stage("serve: each model on the embedded engine, behind a Review service of its own"):
            config = json.loads((run / "spec.json").read_text())
            served = {
                "cpu-finetune": stack.serve(
                    "cpu-finetune", run / "merged", f"runs/{RUN_ID}/merged",
                    config["max_prompt_length"], max_new_tokens, slots=4,
                )
            }  # fmt: skip
            if adapter is not None:
                card = json.loads((adapter / "reviewstack-adapter.json").read_text())
                merged = out / "models" / "reviewer"
                _run("reviewstack-merge", str(adapter), "--out", str(merged))  # once: a rerun finds it
                served["reviewer"] = stack.serve(
                    "reviewer",
                    merged,
                    f"{card['base_model']} + {adapter.name}",
                    reviewer_prompt,
                    reviewer_max_new_tokens or card["max_response_length"],
                    slots=4,
                )

        # λ is shown on the model that writes the format best: the reviewer when there is one
        compared = "reviewer" if adapter is not None else "cpu-finetune"
        systems = {
            "cpu-finetune-lambda-0": ("cpu-finetune", 0.0),
            f"{compared}-lambda-0": (compared, 0.0),
            f"{compared}-lambda-{penalty:g}": (compared, penalty),
        }
        # the CPU fine-tune decodes as the options say; the reviewer as its card says its evaluation did
        sampling = {"cpu-finetune": _sampling(temperature, 0.9, repetition_penalty)}
        if adapter is not None:
            decoding = card.get("lineage", {}).get("decoding") or {}
            sampling["reviewer"] = _sampling(
                decoding.get("temperature", temperature),
                decoding.get("top_p", 0.9),
                decoding.get("repetition_penalty", repetition_penalty),
            )
        with stages.stage(f"review: the test papers by {', '.join(systems)}"):
            papers = out / "test-papers"
            ids = _test_papers(dataset, sample, papers)
            console.print(f"{len(ids)} test papers: {', '.join(ids)}")
            for system, (server, value) in systems.items():
                _cli(
                    "review", "--batch", str(papers), "--system", f"demo-{system}", "--store", str(store),
                    "--server", served[server], "--refusal-penalty", f"{value:g}", *sampling[server],
                    token=token,
                )  # fmt: skip

        with stages.stage(
            "evaluate: hits and precision against the human reviews, the systems compared pairwise"
        ):
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
