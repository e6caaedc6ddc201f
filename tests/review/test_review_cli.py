"""`reviewstack review`: one paper in the terminal, a folder into the store (resumable), the embedded
engine started for the run."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ..refuser import paper_text

CLI = str(Path(sys.executable).with_name("reviewstack"))


def _run(*args: str, timeout: float = 600, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", **extra_env}
    return subprocess.run([CLI, "review", *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def engine(refuser_engine):
    """The session's shared engine (tests/conftest.py): the papers here make prompts well under its 600."""
    return refuser_engine


@pytest.fixture(scope="module")
def papers(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("papers")
    rng = random.Random(5)
    for name in ("a", "b", "c"):
        (folder / f"{name}.md").write_text(paper_text(rng))
    (folder / "notes.csv").write_text("not a paper")
    return folder


def test_one_paper_streams_the_review_then_its_structure(engine, refuser_model, papers):
    result = _run(
        str(papers / "a.md"), "--backend", engine, "--tokenizer", str(refuser_model), "--max-new-tokens", "60"
    )
    assert result.returncode == 0, result.stderr
    assert "1. How to evaluate the idea of the paper" in result.stdout  # the streamed text
    assert "prompt reviewer-v1" in result.stdout and "60 generated tokens" in result.stdout


def test_json_output_is_the_review_response(engine, refuser_model, papers):
    args = ("--backend", engine, "--tokenizer", str(refuser_model), "--max-new-tokens", "20", "--json")
    result = _run(str(papers / "b.md"), *args)
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert len(response["review"]["aspects"]) == 7 and response["generatedTokens"] == 20


def test_sampling_flags_reach_the_backend_and_a_seed_repeats_the_review(engine, refuser_model, papers):
    args = ("--backend", engine, "--tokenizer", str(refuser_model), "--max-new-tokens", "40", "--json")
    sampled = ("--temperature", "1.5", "--top-p", "0.95", "--seed", "7")
    runs = [json.loads(_run(str(papers / "c.md"), *args, *sampled).stdout) for _ in range(2)]
    greedy = json.loads(_run(str(papers / "c.md"), *args).stdout)
    assert runs[0]["rawText"] == runs[1]["rawText"] != greedy["rawText"]
    parameters = runs[0]["lineage"]["parameters"]
    assert parameters["temperature"] == 1.5 and parameters["topP"] == 0.95 and parameters["seed"] == "7"


def test_batch_writes_each_review_once_and_resumes(engine, refuser_model, papers, tmp_path):
    store = tmp_path / "store"
    args = ("--batch", str(papers), "--system", "tiny-v1", "--store", str(store), "--backend", engine)
    args += ("--tokenizer", str(refuser_model), "--max-new-tokens", "30", "--concurrency", "2")
    first = _run(*args)
    assert first.returncode == 0, first.stderr
    written = sorted((store / "reviews" / "tiny-v1").glob("*.json"))
    assert [p.stem for p in written] == ["a", "b", "c"]  # notes.csv is not a paper
    record = json.loads(written[0].read_text())
    assert (
        record["paper_id"] == "a" and record["system"] == "tiny-v1" and len(record["review"]["aspects"]) == 7
    )
    assert record["lineage"]["prompt_version"] == "reviewer-v1" and record["generated_tokens"] == 30
    assert record["review"]["raw_text"].strip()  # what the model wrote, kept beside the parsed review
    stamps = [p.stat().st_mtime_ns for p in written]
    (store / "reviews" / "tiny-v1" / "b.json").unlink()  # as if the batch had been cut before b
    again = _run(*args)
    assert again.returncode == 0 and "3 of 3 papers reviewed" in again.stdout
    assert [p.stat().st_mtime_ns for p in written if p.stem != "b"] == [stamps[0], stamps[2]]
    # resuming with another decoding would mix two systems under one name: refused, with what differs
    (store / "reviews" / "tiny-v1" / "c.json").unlink()
    other = _run(*args, "--refusal-penalty", "2", "--repetition-penalty", "1.2")
    assert other.returncode != 0 and "Traceback" not in other.stderr
    message = " ".join(other.stderr.split())
    assert "other settings" in message and "refusal_penalty 0.0 → 2.0" in message
    assert "repetition_penalty 1.0 → 1.2" in message
    assert not (store / "reviews" / "tiny-v1" / "c.json").exists()


def test_a_paper_that_fails_is_reported_and_the_others_are_written(engine, refuser_model, tmp_path):
    folder = tmp_path / "papers"
    folder.mkdir()
    (folder / "good.md").write_text(paper_text(random.Random(1)))
    (folder / "empty.md").write_text("   \n")
    args = ("--batch", str(folder), "--store", str(tmp_path / "store"), "--backend", engine)
    result = _run(*args, "--tokenizer", str(refuser_model), "--max-new-tokens", "10")
    assert result.returncode == 1
    assert "empty.md" in result.stderr and (tmp_path / "store/reviews/reviewstack/good.json").is_file()


def test_without_a_backend_the_embedded_engine_is_started_for_the_run(refuser_model, papers, tmp_path):
    """The engine started for the run requires a token made for the run, which the CLI sends: a token (or
    a token file that does not exist here) meant for some deployment's engine reaches neither of them."""
    elsewhere = {"REVIEWSTACK_AUTH_TOKEN_FILE": str(tmp_path / "no-such-secret")}
    args = (str(papers / "c.md"), "--engine-model", str(refuser_model), "--max-new-tokens", "15")
    result = _run(*args, **elsewhere)
    assert result.returncode == 0, result.stderr
    assert "15 generated tokens" in result.stdout


def test_with_no_backend_flags_the_embedded_smollm2_writes_the_review(papers):
    """The command users run first: no --server, --backend or --engine-model, so the engine starts on the
    embedded SmolLM2 (unpacked on first use) and the tokenizer is the model's own."""
    from reviewstack.common.aspects import AspectSchema
    from reviewstack.common.embedded_model import default_model_dir

    result = _run(str(papers / "a.md"), "--max-new-tokens", "8", "--json")
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    aspects = response["review"]["aspects"]
    assert [a["name"] for a in aspects] == [a.criterion for a in AspectSchema.SEVEN.aspects]
    assert response["review"]["text"].startswith("1. How to evaluate the idea of the paper\n- ")
    lineage = response["lineage"]
    assert lineage["model"] == str(default_model_dir()) and lineage["promptVersion"] == "reviewer-v1"
    assert lineage["parameters"]["maxNewTokens"] == 8 and lineage["backend"].startswith("http://127.0.0.1:")
    assert 0 < response["generatedTokens"] <= 8 and response["promptTokens"] > 0


def test_paper_and_batch_together_is_a_usage_error(papers):
    result = _run(str(papers / "a.md"), "--batch", str(papers))
    assert result.returncode == 2 and "either a PAPER file or --batch DIR" in result.stderr


def test_the_local_budget_of_a_pi_model_is_its_extended_context_once(tmp_path: Path) -> None:
    """A run's merged/ writes the extended context and the linear factor side by side: 12,288 tokens
    (not 12,288 × 1.5), so a paper is cut where training cut it: 11,138 prompt + 1,150 new tokens."""
    from reviewstack.review.local_engine import budget

    merged, base = tmp_path / "merged", tmp_path / "base"
    merged.mkdir()
    base.mkdir()
    rope = {"rope_type": "linear", "factor": 1.5, "rope_theta": 100000.0}
    (merged / "config.json").write_text(
        json.dumps({"max_position_embeddings": 12288, "rope_parameters": rope})
    )
    (base / "config.json").write_text(json.dumps({"max_position_embeddings": 8192}))
    assert budget(merged) == (11_138, 1_150)
    assert budget(base) == (7_042, 1_150)


def test_batch_concurrency_is_bounded_before_an_engine_allocates_its_slots(tmp_path: Path) -> None:
    result = _run("--batch", str(tmp_path), "--concurrency", "999")
    assert result.returncode == 2 and "less than or equal to 256" in result.stdout + result.stderr


def test_sigterm_stops_the_batch_and_the_engine_it_started(refuser_model, tmp_path: Path) -> None:
    """A batch stopped by SIGTERM (a job runner, `timeout`, a pod ending) takes its local engine with it:
    the engine is a child that holds a port and a model's memory, and nothing else would stop it."""
    import time

    import psutil

    folder = tmp_path / "papers"
    folder.mkdir()
    rng = random.Random(9)
    for number in range(40):
        (folder / f"p{number}.md").write_text(paper_text(rng))
    command = [CLI, "review", "--batch", str(folder), "--store", str(tmp_path / "store")]
    command += ["--engine-model", str(refuser_model), "--concurrency", "1", "--max-new-tokens", "256"]
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    engines: list[psutil.Process] = []
    deadline = time.monotonic() + 300
    while not (tmp_path / "store/reviews/reviewstack/p0.json").is_file():  # the engine is serving
        assert cli.poll() is None and time.monotonic() < deadline, cli.communicate()
        time.sleep(0.2)
    engines = [
        p for p in psutil.Process(cli.pid).children() if "reviewstack-generation" in " ".join(p.cmdline())
    ]
    assert len(engines) == 1
    cli.terminate()
    _, stderr = cli.communicate(timeout=120)
    assert cli.returncode == 143, stderr
    assert "stopped (SIGTERM)" in stderr and "Traceback" not in stderr
    psutil.wait_procs(engines, timeout=30)
    assert not engines[0].is_running()
    assert len(list((tmp_path / "store/reviews/reviewstack").glob("*.json"))) < 40  # it stopped midway
