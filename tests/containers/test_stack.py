"""The whole stack in containers: the images `make images` builds, run with Docker on a network of their
own, driven from this machine over gRPC by the repo's own CLIs in their `--server` modes, with auth on.

    S3 (moto_server) ← dataprep, training (+ the job, local launcher), review → generation, evaluation

data build (3 papers of the bundled sample, uploaded to S3) → train (2 steps of cpu-smoke on the embedded
SmolLM2-135M, inside the training container) → review (2 papers through the review gateway and the
embedded engine) → evaluate. Each stage checks what landed in S3. Run alone:

    .venv/bin/python -m pytest tests/containers

The first run builds the images (about four minutes on two cores, the base image included); later runs
take them from the build cache.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import ArtifactStore, open_store

from .conftest import REPO, STACK_IMAGES, Progress, Stack, build_images, docker, parse_json_output, wait_for

# a cold build of every image is most of it (~15 min on two cores); 40 min leaves the rest of a 90-minute
# CI run room to finish and report instead of the whole run being killed
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

VERSION = os.environ.get("REVIEWSTACK_IMAGE_VERSION", "0.1.0")
IMAGES = {
    "s3": "review-stack/moto:test",
    "dataprep": f"review-stack/dataprep:{VERSION}",
    "training": f"review-stack/training:{VERSION}",
    "generation": f"review-stack/generation:{VERSION}-cpu",
    "review": f"review-stack/review:{VERSION}",
    "evaluation": f"review-stack/evaluation:{VERSION}",
}
GRPC = 50051
SERVICES = {"dataprep": "DataPrep", "training": "Training", "review": "Review", "evaluation": "Evaluation"}
BUCKET = "reviewstack"
S3_KEYS = {"REVIEWSTACK_S3_ACCESS_KEY": "e2e-access", "REVIEWSTACK_S3_SECRET_KEY": "e2e-secret-key"}
# the embedded model inside the training and generation images (images/build/builder.sh: embedded-model)
EMBEDDED_MODEL = "/opt/venv/share/reviewstack/models/smollm2-135m-instruct"
TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
PAPERS = ("50vDcRUz5p", "LPUr2CexmX", "4kT9Jn7LSB")  # the three shortest papers of the sample
SAMPLE = REPO / "data" / "neurips2025-sample"
CLI = str(Path(sys.executable).with_name("reviewstack"))


def test_stack_end_to_end(stack: Stack, progress: Progress, tmp_path: Path) -> None:
    started = time.monotonic()
    build_images(STACK_IMAGES, progress)
    for image in IMAGES.values():  # non-root, and nothing to compile with
        user = docker("image", "inspect", "-f", "{{.Config.User}}", image).stdout.strip()
        assert user == "1000:1000", f"{image} runs as {user!r}"
        found = docker("run", "--rm", "--entrypoint", "sh", image, "-c", "command -v cc gcc c++ || true")
        assert not found.stdout.strip(), f"{image} has a compiler: {found.stdout}"
    token = secrets.token_urlsafe(24)
    host_store, cli_env = start_stack(stack, token, tmp_path)
    # a call without the token is refused: auth is on
    unauthenticated = cli(
        ["train", "list", "--server", target(stack, "training"), "--json"],
        {k: v for k, v in cli_env.items() if k != "REVIEWSTACK_TOKEN"},
        check=False,
    )
    assert unauthenticated.returncode != 0 and "UNAUTHENTICATED" in unauthenticated.stderr, (
        unauthenticated.stderr
    )

    dataset = stage_data(stack, host_store, cli_env, progress)
    stage_train(stack, host_store, cli_env, progress, dataset)
    system = stage_review(stack, host_store, cli_env, progress, tmp_path)
    stage_evaluate(stack, host_store, cli_env, progress, dataset, system)
    progress(f"stack end to end in {time.monotonic() - started:.0f} s (image builds included)")


# -- the stack -----------------------------------------------------------------------------------------
def start_stack(stack: Stack, token: str, tmp_path: Path) -> tuple[ArtifactStore, dict[str, str]]:
    """Start every container, wait until each serves; return the store as seen from here and the CLIs'
    environment (token, S3 endpoint on the published port)."""
    s3 = stack.run("s3", IMAGES["s3"], ports=(9000,))
    s3_port = s3.ports[9000]
    wait_for("S3", lambda: _http_status(s3_port, "/moto-api/") == 200, s3, 60)

    inside = {  # how the services reach the store, on the stack's network
        "REVIEWSTACK_STORE": f"s3://{BUCKET}",
        "REVIEWSTACK_S3_ENDPOINT": "s3:9000",
        "REVIEWSTACK_S3_REGION": "us-east-1",
        "REVIEWSTACK_S3_CREATE_BUCKET": "true",
        **S3_KEYS,
        "REVIEWSTACK_AUTH_TOKEN": token,
    }
    generation = stack.run(
        "generation",
        IMAGES["generation"],
        *("--max-input-tokens", "1100", "--max-total-tokens", "1300", "--max-batch-size", "2"),
        ports=(8080,),
    )
    stack.run("dataprep", IMAGES["dataprep"], env=inside, ports=(GRPC,))
    # runs may train only base models under the roots the operator lists: here the image's embedded one
    model_roots = {"REVIEWSTACK_BASE_MODEL_ROOTS": json.dumps([str(Path(EMBEDDED_MODEL).parent)])}
    stack.run("training", IMAGES["training"], env={**inside, **model_roots}, ports=(GRPC,))
    stack.run("evaluation", IMAGES["evaluation"], env=inside, ports=(GRPC,))
    engine_port = generation.ports[8080]
    wait_for("the generation engine", lambda: _http_status(engine_port, "/health") == 200, generation, 300)
    # the review gateway tokenizes with the served model's tokenizer: the embedded model's, copied out
    # of the generation image and mounted read-only
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir(mode=0o755)
    tokenizer.chmod(0o755)  # the gateway runs as uid 1000
    for name in TOKENIZER_FILES:
        docker("cp", f"{generation.name}:{EMBEDDED_MODEL}/{name}", str(tokenizer / name))
        (tokenizer / name).chmod(0o644)
    stack.run(
        "review",
        IMAGES["review"],
        env={
            **inside,
            "REVIEWSTACK_BACKEND_URL": "http://generation:8080",
            "REVIEWSTACK_TOKENIZER": "/models/smollm2",
            "REVIEWSTACK_MAX_PROMPT_LENGTH": "1024",
            "REVIEWSTACK_MAX_NEW_TOKENS": "160",
        },
        ports=(GRPC,),
        volumes=(f"{tokenizer}:/models/smollm2:ro",),
    )
    from reviewstack.common.grpc import make_channel, wait_until_serving

    for alias, service in SERVICES.items():
        container = stack.containers[alias]
        with make_channel(target(stack, alias)) as channel:  # health needs no token
            name = f"reviewstack.v1.{service}"  # SERVING once its models are loaded
            serving = lambda ch=channel, n=name: wait_until_serving(ch, n, timeout=2) is None  # noqa: E731
            wait_for(f"{alias} SERVING", serving, container, 300)
        stack.progress(f"{alias} serving on {target(stack, alias)}")

    outside = {  # the same store from this machine, through the published port
        "REVIEWSTACK_S3_ENDPOINT": f"127.0.0.1:{s3_port}",
        "REVIEWSTACK_S3_REGION": "us-east-1",
        "REVIEWSTACK_S3_CREATE_BUCKET": "true",
        **S3_KEYS,
    }
    settings = StoreSettings(
        s3_endpoint=outside["REVIEWSTACK_S3_ENDPOINT"],
        s3_access_key=S3_KEYS["REVIEWSTACK_S3_ACCESS_KEY"],
        s3_secret_key=S3_KEYS["REVIEWSTACK_S3_SECRET_KEY"],
        s3_region="us-east-1",
        s3_create_bucket=True,
    )
    env = {**os.environ, **outside, "REVIEWSTACK_TOKEN": token, "REVIEWSTACK_STORE": f"s3://{BUCKET}"}
    env.pop("REVIEWSTACK_AUTH_TOKEN", None)
    return open_store(f"s3://{BUCKET}", settings), env


def target(stack: Stack, alias: str) -> str:
    return f"127.0.0.1:{stack.containers[alias].ports[GRPC]}"


def cli(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=1800)
    if check and result.returncode != 0:
        pytest.fail(f"reviewstack {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def _http_status(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


# -- the stages ----------------------------------------------------------------------------------------
def stage_data(stack: Stack, store: ArtifactStore, env: dict[str, str], progress: Progress) -> str:
    """Upload three papers and their reviews, build a dataset on the DataPrep server; returns its URI."""
    for paper_id in PAPERS:
        store.put_file(f"sources/e2e/papers/{paper_id}.md", SAMPLE / "papers" / f"{paper_id}.md")
        store.put_file(f"sources/e2e/reviews/{paper_id}.json", SAMPLE / "reviews" / f"{paper_id}.json")
    progress("data: building the dataset on the DataPrep server")
    started = time.monotonic()
    args = ["data", "build", "--server", target(stack, "dataprep"), "--source", f"s3://{BUCKET}/sources/e2e"]
    args += ["--out", f"s3://{BUCKET}", "--name", "e2e", "--paper-version", "decision"]
    args += ["--json"]  # the default split: with three papers one each for train, val and test
    summary = parse_json_output(cli(args, env).stdout)
    prefix = f"datasets/e2e/{summary['version']}"
    manifest = json.loads(store.get_bytes(f"{prefix}/manifest.json"))
    assert manifest["counts"]["records"] == len(PAPERS), manifest["counts"]
    assert manifest["counts"]["human_points"] > 0 and not manifest["skipped"]
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "ground_truth.jsonl"):
        assert store.exists(f"{prefix}/{name}"), name
    progress(
        f"data: {summary['uri']} ({manifest['counts']['train']}/{manifest['counts']['val']}/"
        f"{manifest['counts']['test']} records, {manifest['counts']['human_points']} human points) "
        f"in {time.monotonic() - started:.0f} s"
    )
    return summary["uri"]


def stage_train(
    stack: Stack, store: ArtifactStore, env: dict[str, str], progress: Progress, dataset: str
) -> None:
    """Two optimizer steps of cpu-smoke on the embedded model, run by the controller's local launcher
    inside the training container; checkpoints land in S3."""
    run_id = f"e2e-{stack.id}"
    overrides = [
        f"run_id={run_id}",
        f"dataset={dataset}",
        f"base_model={EMBEDDED_MODEL}",
        f"output=s3://{BUCKET}",
        *("max_steps=2", "save_steps=1", "eval_steps=2", "effective_batch_size=1", "max_eval_examples=1"),
        *("max_prompt_length=384", "max_response_length=128", "merge=false"),
    ]
    progress(f"train: submitting {run_id} to the Training server and following it")
    started = time.monotonic()
    args = ["train", "submit", str(REPO / "training-job" / "configs" / "cpu-smoke.yaml"), *overrides]
    result = cli([*args, "--server", target(stack, "training"), "--watch", "--json"], env, check=False)
    if result.returncode != 0:
        script = "tail -n 60 reviewstack-train-logs/*.log"
        log = docker("exec", stack.containers["training"].name, "sh", "-c", script, check=False)
        pytest.fail(
            f"train submit exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            f"\n--- job log ---\n{log.stdout}{log.stderr}"
        )
    run = parse_json_output(result.stdout)
    assert run["operation"]["state"] == "OPERATION_STATE_SUCCEEDED", run
    status = json.loads(store.get_bytes(f"runs/{run_id}/status.json"))
    checkpoints = {d.rsplit("/", 1)[-1] for d in store.list_dirs(f"runs/{run_id}/checkpoints")}
    assert checkpoints >= {"step-1", "step-2"}, checkpoints
    assert store.is_published(f"runs/{run_id}/best"), "no best/ (a validation ran at step 2)"
    assert store.exists(f"runs/{run_id}/metrics.jsonl") and store.exists(f"runs/{run_id}/spec.json")
    progress(
        f"train: {run_id} {status.get('state')} in {time.monotonic() - started:.0f} s, checkpoints "
        f"{sorted(checkpoints)}, loss {run.get('metrics', {}).get('loss')}"
    )


def stage_review(
    stack: Stack, store: ArtifactStore, env: dict[str, str], progress: Progress, tmp_path: Path
) -> str:
    """Two papers through the Review service (and the generation engine behind it), written to
    reviews/<system>/ by the CLI's batch mode; returns the system's store URI."""
    folder = tmp_path / "papers"
    folder.mkdir()
    for paper_id in PAPERS[:2]:
        (folder / f"{paper_id}.md").write_bytes((SAMPLE / "papers" / f"{paper_id}.md").read_bytes())
    progress("review: 2 papers through the review gateway")
    started = time.monotonic()
    args = ["review", "--batch", str(folder), "--server", target(stack, "review"), "--system", "e2e"]
    cli([*args, "--store", f"s3://{BUCKET}", "--concurrency", "2"], env)
    for paper_id in PAPERS[:2]:
        record = json.loads(store.get_bytes(f"reviews/e2e/{paper_id}.json"))
        aspects = record["review"]["aspects"]
        assert [a["name"] for a in aspects] == [a.criterion for a in AspectSchema.SEVEN.aspects], aspects
        assert record["generated_tokens"] > 0 and 0 < record["prompt_tokens"] <= 1024, record
        assert record["lineage"]["backend"] == "http://generation:8080", record["lineage"]
    progress(f"review: 2 reviews with 7 aspects in {time.monotonic() - started:.0f} s")
    return f"s3://{BUCKET}/reviews/e2e"


def stage_evaluate(
    stack: Stack, store: ArtifactStore, env: dict[str, str], progress: Progress, dataset: str, system: str
) -> None:
    """Score the reviews against the dataset's human points on the Evaluation server."""
    progress("evaluate: on the Evaluation server")
    started = time.monotonic()
    args = ["eval", "run", "--system", f"e2e={system}", "--human", dataset, "--out", f"s3://{BUCKET}"]
    result = parse_json_output(
        cli([*args, "--bootstrap", "200", "--server", target(stack, "evaluation"), "--json"], env).stdout
    )
    eval_id = result["eval_id"]
    report = json.loads(store.get_bytes(f"evaluations/{eval_id}/report.json"))
    assert store.exists(f"evaluations/{eval_id}/report.html")
    assert report["eval_id"] == eval_id and sorted(report["papers"]) == sorted(PAPERS[:2]), report["papers"]
    assert result["papers"] == 2, result
    scores = {s["name"]: s for s in result["systems"]}
    assert scores["e2e"]["papers"] == 2, scores
    for key in ("hits", "recall", "precision"):  # numbers (NaN only where a system has no points)
        assert isinstance(scores["e2e"][key], float | int | str), scores["e2e"]
    assert float(scores["e2e"]["hits"]) >= 0 and 0 <= float(scores["e2e"]["recall"]) <= 1, scores["e2e"]
    summary = {
        name: {k: s[k] for k in ("papers", "hits", "recall", "precision")} for name, s in scores.items()
    }
    progress(f"evaluate: {eval_id} in {time.monotonic() - started:.0f} s: {summary}")
