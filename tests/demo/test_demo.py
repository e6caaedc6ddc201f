"""`reviewstack demo` (what `make demo` runs), at its smallest: every service started as its own process
with auth on, the whole method driven through their gRPC APIs, the report where it says it is."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REVIEWSTACK = Path(sys.executable).with_name("reviewstack")
REVIEWER_LINEAGE = "HuggingFaceTB/SmolLM2-135M-Instruct + reviewer-adapter"
REVIEWER_DECODING = {
    "temperature": 1.0,
    "top_p": 0.95,
    "seed": 0,
    "repetition_penalty": 1.1,
    "max_new_tokens": 0,
}


def _reviewer_adapter(folder: Path) -> Path:
    """A LoRA adapter for the embedded base as `reviewstack experiment export` writes one (PEFT's fresh
    adapter: B is zero, so it merges to the base): the demo's reviewer path with real weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from reviewstack.common.adapter_card import AdapterCard
    from reviewstack.common.embedded_model import materialise_embedded_model

    base = AutoModelForCausalLM.from_pretrained(materialise_embedded_model())
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)
    AdapterCard(
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        position_interpolation=1.5,
        target_context=12288,
        max_prompt_length=11138,
        max_response_length=1150,
        lineage={"decoding": REVIEWER_DECODING},  # what `experiment export` records of its evaluation
    ).write(folder)
    return folder


@pytest.mark.slow
def test_the_demo_runs_the_method_through_the_services_and_prints_its_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    command = [
        str(REVIEWSTACK), "demo", "--out", str(out),
        "--steps", "1", "--batch-size", "1", "--max-new-tokens", "24", "--penalty", "2",
        "--reviewer", str(_reviewer_adapter(tmp_path / "reviewer-adapter")),
        "--reviewer-max-new-tokens", "48",
    ]  # fmt: skip
    elsewhere = tmp_path / "elsewhere"  # not the checkout: the demo finds its sample and config itself
    elsewhere.mkdir()
    result = subprocess.run(command, cwd=elsewhere, capture_output=True, text=True, timeout=1800)
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed[-4000:]
    assert "Traceback" not in printed
    for stage in ("1/5 · dataset", "2/5 · fine-tune", "3/5 · serve", "4/5 · review", "5/5 · evaluate"):
        assert stage in printed, stage

    report = Path(re.findall(r"^report: (\S+report\.html)$", printed, flags=re.MULTILINE)[-1])
    assert report.is_file() and report.is_relative_to(out / "store" / "evaluations")
    html = report.read_text()
    assert "cpu-finetune-lambda-0" in html and "reviewer-lambda-2" in html and "<img" in html
    details = json.loads(report.with_name("report.json").read_text())
    systems = {s["name"]: s for s in details["systems"]}
    assert {name: s["refusal_penalty"] for name, s in systems.items()} == {
        "cpu-finetune-lambda-0": 0.0,
        "reviewer-lambda-0": 0.0,
        "reviewer-lambda-2": 2.0,
    }
    test_ids = [
        json.loads(line)["paper_id"] for line in next(out.glob("store/datasets/*/*/test.jsonl")).open()
    ]
    assert sorted(details["papers"]) == sorted(test_ids) and len(test_ids) == 3
    assert all(s["statistics"] for s in systems.values())  # items and empty aspects per review
    assert details["human"]["overall"]["recall"]["mean"] > 0  # the leave-one-out anchor
    pairs = {frozenset((p["a"], p["b"])) for p in details["pairwise"]}
    assert frozenset({"reviewer-lambda-0", "reviewer-lambda-2"}) in pairs
    assert frozenset({"cpu-finetune-lambda-0", "reviewer-lambda-0"}) in pairs
    assert details["penalty_sweeps"] and (report.parent / "plots" / "pairwise.png").is_file()

    # the run the reviews came from: trained through the Training service, merged, with PI in its config
    run = out / "store" / "runs" / "demo-smollm2-pi"
    assert json.loads((run / "status.json").read_text())["state"] == "succeeded"
    merged_config = json.loads((run / "merged" / "config.json").read_text())
    assert merged_config["rope_parameters"]["rope_type"] == "linear"
    assert merged_config["rope_parameters"]["factor"] == pytest.approx(1.5)
    for system in ("cpu-finetune-lambda-0", "reviewer-lambda-0", "reviewer-lambda-2"):
        reviews = sorted((out / "store" / "reviews" / f"demo-{system}").glob("*.json"))
        assert len(reviews) == 3
        lineage = json.loads(reviews[0].read_text())["lineage"]
        cpu = system.startswith("cpu")
        assert lineage["model"] == ("runs/demo-smollm2-pi/merged" if cpu else REVIEWER_LINEAGE)
        # the CPU fine-tune decodes with the demo's options, the reviewer with its card's decoding
        decoded = {k: lineage["parameters"][k] for k in ("temperature", "top_p", "repetition_penalty")}
        assert decoded == ({"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.0} if cpu else
                           {"temperature": 1.0, "top_p": 0.95, "repetition_penalty": 1.1})  # fmt: skip
    # the reviewer adapter, merged onto the packaged base at start-up with the PI factor of its card
    reviewer = json.loads((out / "models" / "reviewer" / "config.json").read_text())
    assert reviewer["rope_parameters"]["factor"] == pytest.approx(1.5)
    # the services' logs stay in the demo's folder, wherever it was started
    assert not list(ROOT.glob("reviewstack-train-logs")) and not list(elsewhere.iterdir())
