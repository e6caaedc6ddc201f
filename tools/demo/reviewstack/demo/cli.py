"""The `reviewstack demo` command: each stage is the CLI verb a user would type."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from reviewstack.common import errors
from reviewstack.demo.stack import Stack, Stages, console, program

RUN_ID = "demo-smollm2-pi"
DATASET_NAME = "neurips2025-sample"


def _checkout() -> Path:
    """The checkout this package was installed from (editable, as `make` installs it), so the demo runs
    from any directory; installed any other way, the working directory, and the options name the paths."""
    installed_from = Path(__file__).resolve().parents[4]  # tools/demo/reviewstack/demo/cli.py
    return installed_from if (installed_from / "data" / DATASET_NAME).is_dir() else Path.cwd()


CHECKOUT = _checkout()
SAMPLE = CHECKOUT / "data" / DATASET_NAME
TRAIN_CONFIG = CHECKOUT / "training-job" / "configs" / "smollm2-cpu-pi.yaml"
SHIPPED_REVIEWER = CHECKOUT / "models" / "smollm2-135m-reviewer-lora"


def _cli(*args: str, token: str) -> None:
    """One `reviewstack …` command, its output shown as it comes; a failure stops the demo."""
    _run("reviewstack", *args, env={"REVIEWSTACK_TOKEN": token})


def _run(executable: str, *args: str, env: dict[str, str] | None = None) -> None:
    console.print(f"[cyan]$ {executable} {' '.join(args)}[/]", soft_wrap=True)
    result = subprocess.run([program(executable), *args], env={**os.environ, **(env or {})}, check=False)
    if result.returncode != 0:
        raise errors.ReviewStackError(
            f"`{executable} {' '.join(args[:2])}` failed (exit {result.returncode})"
        )


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


def _sampling(temperature: float, top_p: float, repetition_penalty: float) -> dict[str, float]:
    """A system's decoding; seed 0 when it samples, so a rerun writes the same reviews."""
    sampled = {"temperature": temperature, "top_p": top_p, "seed": 0} if temperature else {}
    return {**sampled, "repetition_penalty": repetition_penalty}


def _flags(decoding: dict[str, float]) -> tuple[str, ...]:
    """The decoding as `reviewstack review` options."""
    return tuple(a for key, value in decoding.items() for a in (f"--{key.replace('_', '-')}", f"{value:g}"))


def demo(
    out: Annotated[Path, typer.Option(help="working folder: store, logs, the reviewed papers")] = CHECKOUT
    / "out"
    / "demo",
    sample: Annotated[Path, typer.Option(help="source folder of papers and reviews")] = SAMPLE,
    train_config: Annotated[
        Path, typer.Option(help="the CPU fine-tune's training spec (`reviewstack-train` YAML)")
    ] = TRAIN_CONFIG,
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
    serve: Annotated[
        bool,
        typer.Option(
            help="at the end, start the web page on the demo's services and keep them all running until "
            "Ctrl-C (`make demo` does; WEB=0 does not)"
        ),
    ] = False,
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
    if not train_config.is_file():
        raise errors.InvalidArgument(
            f"no training spec at {train_config}: pass --train-config (the checkout has "
            "training-job/configs/smollm2-cpu-pi.yaml)"
        )
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
                    "train", "submit", str(train_config.resolve()), f"run_id={RUN_ID}",
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
                    "--server", served[server], "--refusal-penalty", f"{value:g}", *_flags(sampling[server]),
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

        _summary(stages, stack, report)
        if serve:
            systems = {name: {"target": target, **sampling[name]} for name, target in served.items()}
            _serve_page(stack, systems, evaluation, token, out)


def _summary(stages: Stages, stack: Stack, report: Path) -> None:
    console.rule(f"[bold]done in {time.monotonic() - stages.started:.0f} s")
    for title, took in stages.timings:
        console.print(f"  {took:6.0f} s  {title}")
    console.print(f"logs of the services: {stack.logs}", soft_wrap=True)
    console.print(f"[bold green]report:[/] {report}", soft_wrap=True)  # one line: a path to copy


def _serve_page(stack: Stack, served: dict[str, dict], evaluation: str, token: str, out: Path) -> None:
    """The web page (`reviewstack-web`) on the demo's Review services (each with the decoding its reviews
    were written with), Evaluation service and store, until Ctrl-C. Its login token is new each time,
    kept in out/demo/web-login-token for a second browser."""
    login = secrets.token_urlsafe(18)
    token_file = out / "web-login-token"
    token_file.write_text(login + "\n")
    token_file.chmod(0o600)
    page = {
        "REVIEWSTACK_REVIEW_SERVICES": json.dumps(served),
        "REVIEWSTACK_EVALUATION_SERVICE": evaluation,
        "REVIEWSTACK_GRPC_TOKEN": token,
        "REVIEWSTACK_LOGIN_TOKEN": login,
    }
    url = stack.wait_http("reviewstack-web", stack.start("reviewstack-web", page), 60, path="/healthz")
    console.rule("[bold]the web page")
    console.print(f"[bold green]open:[/] {url}   [bold]login token:[/] {login}", soft_wrap=True)
    console.print(
        f"review a paper with {', '.join(served)}, change λ, open the report and compare the systems; "
        "Ctrl-C stops the page and the services"
    )
    try:
        while True:
            time.sleep(2)
            stack.check_alive()
    except KeyboardInterrupt:
        console.print("stopping the page and the services")
