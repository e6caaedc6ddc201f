"""`reviewstack experiment run` end to end on CPU at tiny sizes: a dataset from sample papers, two
training variants of a tiny Llama (LoRA and full), reviews of two test papers by three systems (one a
swept λ), one evaluation and the experiment report; then a rerun that resumes instead of redoing."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import yaml

from ..dataprep.conftest import copy_papers, sample_ids
from ..trainjob.conftest import make_tiny_llama

REPO = Path(__file__).resolve().parents[2]

REVIEWSTACK = Path(sys.executable).with_name("reviewstack")
CANDIDATES = ("train:lora[learning_rate=0.0001]", "train:lora[learning_rate=0.001]")
VALIDATIONS = tuple(c.replace("train:", "validate:") for c in CANDIDATES)
DECODINGS = ("validate:full[temperature=1,top_p=0.9,max_new_tokens=12]",
             "validate:full[temperature=0.7,top_p=0.9,max_new_tokens=12]")  # fmt: skip

TINY_TRAINING = {
    "method": "lora",
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    "target_context": 768,  # the tiny model's 512 × PI 1.5
    "max_prompt_length": 384,
    "max_response_length": 256,
    "max_steps": 1,
    "effective_batch_size": 1,
    "eval_steps": 1,
    "save_steps": 1,
    "max_eval_examples": 1,
    "device": "cpu",
    "precision": "fp32",
    "attention": "sdpa",
    "gradient_checkpointing": False,
}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("experiment")
    copy_papers(root / "papers", sample_ids()[:6])
    base = make_tiny_llama(root / "tiny-llama")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY_TRAINING))
    spec = {
        "id": "tiny",
        "title": "Tiny experiment",
        "description": "Two variants of a random tiny Llama; the report's machinery, not its numbers.",
        "datasets": {
            "sample": {
                "sources": ["papers"],
                "paper_version": "late",
                "split": [0.5, 0.17, 0.33],
                "max_prompt_length": 384,
                "max_response_length": 256,
            }
        },
        "runs": {
            "lora": {
                "dataset": "sample",
                "config": "tiny.yaml",
                "base_model": str(base),
                "select": {"learning_rate": [1e-4, 1e-3]},
                "select_by": "well_formed",  # each candidate reviews the validation paper first
            },
            "full": {  # the learning rate lora's selection chose
                "dataset": "sample",
                "config": "tiny.yaml",
                "base_model": str(base),
                "overrides": {"method": "full"},
                "selection_of": "lora",
            },
        },
        "decoding": {"temperature": 0.7, "top_p": 0.9, "seed": 0, "max_new_tokens": 12},
        "systems": {
            "lora": {"run": "lora"},
            "full": {  # each reviews full's validation paper; the first wins a tie
                "run": "full",
                "decodings": [
                    {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 12},
                    {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 12},
                ],
            },
        },
        "sweep": {"system": "lora", "refusal_penalties": [0, 2]},
        "evaluation": {"human": "sample", "max_papers": 2, "bootstrap": 50},
        "comparisons": [
            {"title": "LoRA vs full fine-tuning", "a": "lora", "b": "full"},
            {"title": "refusal penalty", "a": "lora-l2", "b": "lora"},
            {"title": "human anchor", "a": "lora", "b": "human"},
        ],
    }
    (root / "tiny-experiment.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return {"root": root, "spec": root / "tiny-experiment.yaml", "store": root / "store"}


def _run(experiment: dict[str, Path], *extra: str) -> subprocess.CompletedProcess:
    command = [
        str(REVIEWSTACK), "experiment", "run", str(experiment["spec"]), "--store", str(experiment["store"]),
        "--work", str(experiment["root"] / "work"), "--concurrency", "2", *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=1500, check=False)


@pytest.fixture(scope="module")
def first_run(experiment: dict[str, Path]) -> subprocess.CompletedProcess:
    return _run(experiment, "--jobs", "2")


@pytest.mark.slow
def test_the_experiment_runs_end_to_end(experiment: dict[str, Path], first_run) -> None:
    store = experiment["store"]
    printed = first_run.stdout + first_run.stderr
    assert first_run.returncode == 0, printed[-4000:]
    assert "Traceback" not in printed

    state = json.loads((store / "experiments/tiny/state.json").read_text())
    steps = state["steps"]
    assert set(steps) == {"data:sample", *CANDIDATES, *VALIDATIONS, "select:lora", "train:full",
                          *DECODINGS, "choose:full", "review:lora", "review:full", "review:lora-l2",
                          "eval"}  # fmt: skip
    assert set(state["plan"]) == set(steps)  # every step of the spec, and no other
    assert state["report"]["html"] == "experiments/tiny/report.html"  # a key: the state travels
    for step in (*CANDIDATES, "train:full"):
        status = json.loads((store / steps[step]["run"] / "status.json").read_text())
        assert status["state"] == "succeeded" and status["best"]["step"] == 1
    # each candidate reviewed the validation paper with its own run; 12 new tokens write no whole review,
    # so the shares tie and the lowest validation loss chooses; full trains with the chosen values
    for train, validate in zip(CANDIDATES, VALIDATIONS, strict=True):
        assert steps[validate]["model"] == steps[train]["run"] and steps[validate]["papers"] == 1
        record = json.loads(next((store / steps[validate]["reviews"]).glob("*.json")).read_text())
        assert record["generated_tokens"] == record["lineage"]["parameters"]["max_new_tokens"] == 12
    losses = {steps[c]["run"]: steps[c]["best"]["val_loss"] for c in CANDIDATES}
    selection = steps["select:lora"]
    assert selection["run"] == min(losses, key=losses.get) and len(selection["candidates"]) == 2
    assert selection["by"].startswith("most well-formed reviews")
    assert [c["validation"]["well_formed"] for c in selection["candidates"]] == [0, 0]
    assert [c["validation"]["cut_short"] for c in selection["candidates"]] == [1, 1]
    chosen_lr = selection["chosen"]["learning_rate"]
    assert steps["review:lora"]["model"] == selection["run"]
    full_spec = json.loads((store / steps["train:full"]["run"] / "spec.json").read_text())
    assert full_spec["method"] == "full" and full_spec["learning_rate"] == chosen_lr
    for system in ("lora", "full", "lora-l2"):
        reviews = sorted((store / steps[f"review:{system}"]["reviews"]).glob("*.json"))
        assert len(reviews) == 2
        lineage = json.loads(reviews[0].read_text())["lineage"]
        assert lineage["parameters"]["refusal_penalty"] == (2.0 if system == "lora-l2" else 0.0)
        # full's test papers are reviewed with the decoding its choose: step kept
        assert lineage["parameters"]["temperature"] == (1.0 if system == "full" else 0.7)
    choice = steps["choose:full"]
    assert choice["index"] == 0 and choice["chosen"]["temperature"] == 1.0
    assert [c["validation"]["papers"] for c in choice["candidates"]] == [1, 1]
    assert all(steps[d]["model"] == steps["train:full"]["run"] for d in DECODINGS)

    report = json.loads((store / "experiments/tiny/report.json").read_text())
    assert report["evaluation"]["papers"] == 2
    assert {s["name"] for s in report["systems"]} == {"lora", "full", "lora-l2"}
    comparisons = {c["title"]: c for c in report["comparisons"]}
    lora_full = comparisons["LoRA vs full fine-tuning"]
    assert lora_full["frame"] == "all human points" and lora_full["papers"] == 2
    assert sum(lora_full["hits"][k] for k in ("wins", "ties", "losses")) == 2
    assert comparisons["human anchor"]["frame"] == "leave-one-out"
    assert [p["refusal_penalty"] for p in report["sweep"]["points"]] == [0, 2]
    assert all(r["curve"] and r["best"]["step"] == 1 for r in report["runs"])
    assert [r["name"] for r in report["runs"] if r["chosen"]] == [
        c.removeprefix("train:") for c in CANDIDATES if steps[c]["run"] == selection["run"]
    ]
    assert [c["chosen"] for c in report["selections"][0]["candidates"]].count(True) == 1
    assert report["decoding_choices"][0]["system"] == "full"
    assert {s["name"]: s["decoding"]["temperature"] for s in report["systems"]}["full"] == 1.0
    assert report["human"]["hits"]["mean"] > 0
    html = (store / "experiments/tiny/report.html").read_text()
    assert "LoRA vs full fine-tuning" in html and "data:image/png;base64" in html
    assert f"report: {(store / 'experiments/tiny/report.html').as_uri()}" in first_run.stdout.replace(
        "\n", ""
    )


@pytest.mark.slow
def test_the_report_reads_in_headless_chromium(experiment: dict[str, Path], first_run) -> None:
    """The page a person opens: every figure decodes, the tables hold the rows, nothing is fetched."""
    from selenium.webdriver.common.by import By

    from ..browser import headless_chromium

    assert first_run.returncode == 0
    page = experiment["store"] / "experiments/tiny/report.html"
    with headless_chromium() as browser:
        browser.get(page.as_uri())
        assert browser.title.startswith("Tiny experiment")
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
        )
        assert {alt for alt, _, _ in images} == {"comparisons", "λ sweep", "training curves"}
        assert all(complete and width > 200 for _, complete, width in images), images
        comparisons = browser.find_elements(
            By.XPATH, "//h2[@id='comparisons']/following-sibling::table[1]//tr"
        )
        assert len(comparisons) == 1 + 3  # header + the spec's three comparisons
        systems = browser.find_element(By.XPATH, "//h2[@id='systems']/following-sibling::table[1]").text
        assert "lora-l2" in systems and "human (leave-one-out)" in systems
        fetched = browser.execute_script(
            "return performance.getEntriesByType('resource').map(r => r.name)"
            ".filter(n => !n.startsWith('data:'))"
        )
        assert fetched == []  # self-contained: it opens from a bucket or a mail attachment alike
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []


@pytest.mark.slow
def test_a_system_exports_as_an_adapter_folder_that_merges(experiment: dict[str, Path], first_run) -> None:
    """`experiment export`: the chosen run's adapter with its card and model card, which
    reviewstack-merge turns back into a model the engine serves."""
    assert first_run.returncode == 0
    folder = experiment["root"] / "exported"
    command = [str(REVIEWSTACK), "experiment", "export", "tiny", "lora", "--out", str(folder),
               "--store", str(experiment["store"])]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    steps = json.loads((experiment["store"] / "experiments/tiny/state.json").read_text())["steps"]
    card = json.loads((folder / "reviewstack-adapter.json").read_text())
    assert card["position_interpolation"] == 1.5 and card["target_context"] == 768
    assert card["lineage"]["run"] == steps["select:lora"]["run"]
    assert card["lineage"]["learning_rate"] == steps["select:lora"]["chosen"]["learning_rate"]
    assert card["evaluation"]["papers"] == 2 and "low" in card["evaluation"]["hits"]
    weights = (folder / "adapter_model.safetensors").read_bytes()  # the card names the file it ships
    assert card["lineage"]["weights"]["sha256"] == hashlib.sha256(weights).hexdigest()
    assert card["lineage"]["weights"]["dtypes"] == ["F32"]  # trained in fp32 here and shipped as stored
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-llama"  # a name, not the training machine's path
    readme = (folder / "README.md").read_text()
    assert "| this adapter |" in readme and "(chosen)" in readme and "{{" not in readme
    assert "| 0 / 1 (1 cut) |" in readme  # the candidates' validation reviews

    merged = experiment["root"] / "merged-export"
    merge = [str(REVIEWSTACK.with_name("reviewstack-merge")), str(folder), "--out", str(merged),
             "--base", str(experiment["root"] / "tiny-llama")]  # fmt: skip
    result = subprocess.run(merge, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((merged / "config.json").read_text())["rope_parameters"]["factor"] == 1.5

    refused = subprocess.run(
        [*command[:4], "nope", *command[5:]], capture_output=True, text=True, timeout=120, check=False
    )
    assert refused.returncode != 0 and "not a trained system of tiny" in refused.stderr


@pytest.mark.slow
def test_a_rerun_resumes_instead_of_redoing(experiment: dict[str, Path], first_run) -> None:
    store = experiment["store"]
    assert first_run.returncode == 0
    steps = json.loads((store / "experiments/tiny/state.json").read_text())["steps"]
    # the resumed rerun: one review lost (an interrupted batch) is written again, nothing else is redone
    trained = {
        step: (store / steps[step]["run"] / "status.json").stat().st_mtime_ns
        for step in (*CANDIDATES, "train:full")
    }
    lost = sorted((store / steps["review:full"]["reviews"]).glob("*.json"))[0]
    kept = sorted((store / steps["review:lora"]["reviews"]).glob("*.json"))[0]
    kept_mtime = kept.stat().st_mtime_ns
    lost.unlink()
    # the chosen run's merged weights left behind, as a store carried off a GPU machine without them:
    # the swept system's lost review is written by that run merged again from its best adapter
    (store / steps["select:lora"]["run"] / "merged" / "model.safetensors").unlink()
    swept = sorted((store / steps["review:lora-l2"]["reviews"]).glob("*.json"))[0]
    swept.unlink()
    second = _run(experiment)
    printed = second.stdout + second.stderr
    assert second.returncode == 0, printed[-4000:]
    assert "data:sample reused" in printed and "train:full reused" in printed
    assert all(f"{step} reused" in printed for step in CANDIDATES)
    assert "review:lora reused" in printed and "review:full reused" not in printed
    assert lost.is_file() and kept.stat().st_mtime_ns == kept_mtime
    assert swept.is_file() and list((experiment["root"] / "work" / "logs").glob("merge-*.log"))
    for step, mtime in trained.items():
        assert (store / steps[step]["run"] / "status.json").stat().st_mtime_ns == mtime
    again = json.loads((store / "experiments/tiny/state.json").read_text())["steps"]
    assert again["eval"]["evaluation"] != steps["eval"]["evaluation"]  # a rewritten review: evaluated anew
    assert all(again[s]["finished"] == steps[s]["finished"] for s in (*CANDIDATES, "select:lora"))
    assert all(f"{step} reused" in printed for step in VALIDATIONS)

    # a third run with nothing lost reuses the evaluation too
    third = _run(experiment)
    assert third.returncode == 0 and "eval reused" in third.stdout + third.stderr

    # a variant left out: evaluated without it, and the report says which comparison could not be made
    fourth = _run(experiment, "--skip", "full")
    assert fourth.returncode == 0, (fourth.stdout + fourth.stderr)[-3000:]
    report = json.loads((store / "experiments/tiny/report.json").read_text())
    assert report["skipped"] == ["full"] and {s["name"] for s in report["systems"]} == {"lora", "lora-l2"}
    missing = {c["title"]: c.get("missing") for c in report["comparisons"]}
    assert missing["LoRA vs full fine-tuning"] == "not made: full skipped" and not missing["human anchor"]


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_specs_load_and_their_id_is_their_file_name(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reviewstack.experiment.spec import load_experiment

    monkeypatch.setenv("REVIEWSTACK_DATA", "/data")  # the data folder a user names; not read here
    spec = load_experiment(path)
    assert spec.id == path.stem  # bench/gpu_experiment.sh finds a spec's state by its file name
    assert spec.comparisons and spec.evaluation.split == "test"


def test_a_spec_with_a_dangling_name_is_refused_with_its_place(tmp_path: Path) -> None:
    from reviewstack.common.errors import InvalidArgument
    from reviewstack.experiment.spec import load_experiment

    spec = {
        "id": "bad",
        "title": "bad",
        "datasets": {"d": {"sources": ["x"]}},
        "runs": {"r": {"dataset": "nope", "config": "c.yaml"}},
        "systems": {"s": {"run": "r"}},
        "evaluation": {"human": "d"},
        "comparisons": [{"title": "t", "a": "s", "b": "ghost"}],
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(InvalidArgument) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert "runs.r.dataset: no dataset 'nope'" in message and "comparisons[0].b: no system 'ghost'" in message


def test_a_selection_is_checked_and_names_each_candidate(tmp_path: Path) -> None:
    from reviewstack.common.errors import InvalidArgument
    from reviewstack.experiment.spec import load_experiment

    def spec(**runs: dict) -> Path:
        data = {
            "id": "sel",
            "title": "sel",
            "datasets": {"d": {"sources": ["x"]}},
            "runs": {name: {"dataset": "d", "config": "c.yaml", **run} for name, run in runs.items()},
            "systems": {"s": {"base": "embedded"}},
            "evaluation": {"human": "d"},
        }
        (tmp_path / "sel.yaml").write_text(yaml.safe_dump(data))
        return tmp_path / "sel.yaml"

    grid = {"learning_rate": [1e-4, 5e-4], "lora.r": [8, 16]}
    bad = spec(
        a=({"select": grid}),
        b={"selection_of": "a", "overrides": {"learning_rate": 1e-3}},
        c={"selection_of": "b"},
        e={"select": {"epochs": [1, 2]}, "overrides": {"epochs": 3}},
        f={"select_by": "well_formed"},
    )
    with pytest.raises(InvalidArgument) as caught:
        load_experiment(bad)
    message = str(caught.value)
    assert "runs.b: overrides what it takes from a's selection" in message
    assert "runs.c.selection_of: 'b' is not another run with a select block" in message
    assert "runs.e: epochs both selected and overridden" in message
    assert "runs.f.select_by: a run without a select block chooses nothing" in message
    with pytest.raises(InvalidArgument, match=r"runs\.d\.select: Value error, learning_rate: give 2 to 8"):
        load_experiment(spec(d={"select": {"learning_rate": [1e-4]}}))

    good = load_experiment(spec(a={"select": grid}, b={"selection_of": "a"}))
    assert [label for label, _ in good.candidates("a")] == [
        "a[learning_rate=0.0001,lora.r=8]",
        "a[learning_rate=0.0001,lora.r=16]",
        "a[learning_rate=0.0005,lora.r=8]",
        "a[learning_rate=0.0005,lora.r=16]",
    ]
    assert good.candidates("b") == [("b", {})]


def test_candidate_decodings_belong_to_a_trained_system_and_replace_its_decoding() -> None:
    from pydantic import ValidationError

    from reviewstack.experiment.spec import SystemSpec, decoding_label

    two = [{"temperature": 0.7, "top_p": 0.9}, {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1}]
    for bad in (
        {"base": "embedded", "decodings": two},  # an untrained base has no validation split to choose on
        {"run": "r", "decodings": two, "decoding": two[0]},
        {"run": "r", "decodings": two[:1]},
    ):
        with pytest.raises(ValidationError, match="decodings: 2 to 8 candidates for a trained system"):
            SystemSpec(**bad)
    system = SystemSpec(run="r", decodings=two)
    assert [decoding_label(d) for d in system.decodings] == [
        "temperature=0.7,top_p=0.9",
        "temperature=0.7,top_p=0.9,repetition_penalty=1.1",
    ]


def test_selection_by_form_prefers_well_formed_reviews_and_breaks_ties_by_loss() -> None:
    """Validation loss did not predict whether a small model ends its reviews (experiments.md): a
    candidate with the lower loss but fewer finished validation reviews loses; equal shares fall back
    to the loss."""
    from reviewstack.experiment.runner import choose

    def candidate(label: str, loss: float, formed: int) -> dict:
        return {
            "label": label,
            "best": {"val_loss": loss},
            "validation": {"well_formed": formed, "papers": 40},
        }

    fit, finishes, also = (
        candidate("fit", 2.49, 33),
        candidate("finishes", 2.53, 38),
        candidate("also", 2.51, 38),
    )
    assert choose([fit, finishes], "validation_loss")["label"] == "fit"
    assert choose([fit, finishes], "well_formed")["label"] == "finishes"
    assert choose([fit, finishes, also], "well_formed")["label"] == "also"


def test_a_decoding_is_chosen_by_its_well_formed_share_and_a_tie_keeps_the_first() -> None:
    from reviewstack.experiment.runner import most_well_formed

    assert most_well_formed([{"well_formed": 33, "papers": 40}, {"well_formed": 38, "papers": 40}]) == 1
    assert most_well_formed([{"well_formed": 38, "papers": 40}, {"well_formed": 38, "papers": 40}]) == 0
    assert most_well_formed([{"well_formed": 0, "papers": 0}, {"well_formed": 1, "papers": 40}]) == 1


def _runner(tmp_path: Path, spec: dict, **options: object):
    """A runner over a spec written to tmp_path and a local store there, for tests that never run a verb."""
    from reviewstack.common.store import open_store
    from reviewstack.experiment.runner import ExperimentRunner, Options
    from reviewstack.experiment.spec import load_experiment
    from reviewstack.experiment.verbs import Verbs

    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    store = open_store(str(tmp_path / "store"))
    verbs = Verbs(store.uri, tmp_path / "logs")
    return ExperimentRunner(
        load_experiment(tmp_path / "spec.yaml"), store, tmp_path / "work", verbs, Options(**options)
    )


def _base_only_spec(**extra: object) -> dict:
    """One dataset and one untrained system "lora": enough to build a runner that runs no verb."""
    spec = {
        "id": "t",
        "title": "t",
        "datasets": {"d": {"sources": ["papers"]}},
        "systems": {"lora": {"base": "embedded"}},
        "evaluation": {"human": "d"},
    }
    return {**spec, **extra}


def test_a_run_that_cannot_fit_its_dataset_is_refused_before_anything_runs(tmp_path: Path) -> None:
    """The seed table's first GPU run lost its no-PI variant to this, after two others had trained: the
    runner now checks every run's config + overrides (as TrainSpec) and its dataset's lengths first."""
    from reviewstack.common.errors import InvalidArgument

    (tmp_path / "train.yaml").write_text(yaml.safe_dump({"method": "lora", "target_context": 12288}))
    spec = {
        "id": "fit",
        "title": "fit",
        "datasets": {"long": {"sources": ["papers"]}},  # 11,138 + 1,150 tokens
        "runs": {
            "pi": {"dataset": "long", "config": "train.yaml"},
            "nopi": {
                "dataset": "long",
                "config": "train.yaml",
                "overrides": {"target_context": 8192, "max_prompt_length": 7042},
            },
        },
        "systems": {"pi": {"run": "pi"}, "nopi": {"run": "nopi"}},
        "evaluation": {"human": "long"},
    }
    runner = _runner(tmp_path, spec)
    with pytest.raises(InvalidArgument) as caught:
        runner.run()
    assert "runs.nopi: dataset long holds prompts and responses of up to 11138 + 1150" in str(caught.value)
    assert not (tmp_path / "logs").exists()  # no verb ran: nothing was built or trained first


def test_a_comparison_read_from_the_other_side_flips_wins_and_differences() -> None:
    from reviewstack.experiment.report import _comparison

    hits = {"papers": 5, "wins": 3, "ties": 1, "losses": 1, "p_value": 0.6, "mean_difference": 0.8,
            "difference_low": 0.2, "difference_high": 1.4}  # fmt: skip
    pairwise = [
        {"a": "x", "b": "y", "frame": "all human points", "papers": 5, "hits": hits, "precision": hits}
    ]
    flipped = _comparison({"title": "t", "a": "y", "b": "x", "note": ""}, pairwise)
    assert (flipped["hits"]["wins"], flipped["hits"]["ties"], flipped["hits"]["losses"]) == (1, 1, 3)
    assert flipped["hits"]["mean_difference"] == -0.8
    assert (flipped["hits"]["difference_low"], flipped["hits"]["difference_high"]) == (-1.4, -0.2)
    assert _comparison({"title": "t", "a": "x", "b": "human", "note": ""}, pairwise)["missing"]


def _steps(started: list[str], fail: str = "", slow: str = "", **needs: tuple[str, ...]):
    """Steps a, b, c, d that note when they start and take 0.3 s (`slow` 0.9 s); `fail` raises."""
    from reviewstack.experiment.runner import Step

    def work(name: str, made: dict[str, str]) -> str:
        started.append(name)
        time.sleep(0.9 if name == slow else 0.3)
        if name == fail:
            raise RuntimeError(f"{name} failed")
        return f"{name}<-{','.join(sorted(made))}"

    return [Step(n, partial(work, n), needs.get(n, ())) for n in "abcd"]


def test_steps_of_an_earlier_spec_stay_in_the_state_but_leave_reports() -> None:
    from reviewstack.experiment.report import planned_steps

    steps = {"train:lora": {"run": "runs/a"}, "train:lora[learning_rate=0.001]": {"run": "runs/b"}}
    assert planned_steps({"steps": steps, "plan": ["train:lora", "eval"]}) == {
        "train:lora": {"run": "runs/a"}
    }
    assert planned_steps({"steps": steps}) == steps  # a state written before plans were recorded


def test_the_steps_table_prints_a_candidates_name_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from reviewstack.experiment import cli

    buffer = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buffer, width=200))
    cli._print_steps({"steps": {"train:lora[learning_rate=0.002]": {"run": "runs/tiny-lora-761f34"}}})
    assert "train:lora[learning_rate=0.002]" in buffer.getvalue()


def test_a_failed_step_lets_running_ones_finish_and_starts_no_queued_one(tmp_path: Path) -> None:
    from reviewstack.common.errors import FailedPrecondition

    runner = _runner(tmp_path, _base_only_spec(), jobs=2)
    started: list[str] = []
    with pytest.raises(
        FailedPrecondition, match="a failed: RuntimeError: a failed; what finished is recorded"
    ):
        # b outlasts a by 0.6 s, so a's failure is seen while b still runs (an equal pair raced in CI)
        runner._schedule(_steps(started, fail="a", slow="b"))  # an unexpected error is named by its step
    assert sorted(started) == ["a", "b"]  # b was running and finished; c and d, queued, never started


def test_a_step_waits_for_what_it_needs_and_no_longer(tmp_path: Path) -> None:
    """A review needs its own run only: c (needing a) starts as soon as a ends, while b still runs."""
    runner = _runner(tmp_path, _base_only_spec(), jobs=2)
    started: list[str] = []
    made = runner._schedule(_steps(started, slow="b", c=("a",), d=("b", "c")))
    assert sorted(started[:2]) == ["a", "b"] and started[2:] == ["c", "d"]
    assert made["c"] == "c<-a" and made["d"] == "d<-a,b,c"


def test_progress_is_read_from_the_steps_own_run_and_review_folder(tmp_path: Path) -> None:
    """A run "lora" and a swept system "lora-l2" share a name's prefix: each step reads its own folder."""
    spec = _base_only_spec(sweep={"system": "lora", "refusal_penalties": [2]})
    runner = _runner(tmp_path, spec)
    store = runner.store
    store.put_bytes(
        "runs/t-lora-abcdef/status.json",
        json.dumps({"state": "running", "step": 3, "total_steps": 10}).encode(),
    )
    for paper in ("a", "b"):
        store.put_bytes(f"reviews/t.lora-123456/{paper}.json", b"{}")
    store.put_bytes("reviews/t.lora-l2-654321/a.json", b"{}")
    runner._targets = {
        "train:lora": ("runs/t-lora-abcdef", 0),
        "review:lora": ("reviews/t.lora-123456", 5),
        "review:lora-l2": ("reviews/t.lora-l2-654321", 5),
    }
    assert runner._progress_of("train:lora", False) == (3, 10, "running")
    assert runner._progress_of("review:lora", False)[:2] == (2, 5)
    assert runner._progress_of("review:lora-l2", False)[:2] == (1, 5)
    assert runner._progress_of("review:other", False) == (0, 0, "waiting")


def test_servers_are_named_by_service_and_anything_else_is_refused() -> None:
    from reviewstack.common.errors import InvalidArgument
    from reviewstack.experiment.verbs import parse_servers

    assert parse_servers(["training=training:50051", "evaluation=10.0.0.2:50051"]) == {
        "training": "training:50051",
        "evaluation": "10.0.0.2:50051",
    }
    for bad in ("review=r:1", "training", "training=", "=x:1"):
        with pytest.raises(InvalidArgument, match="SERVICE=HOST:PORT"):
            parse_servers([bad])
