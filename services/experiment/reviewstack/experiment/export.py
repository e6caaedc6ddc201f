"""`reviewstack experiment export`: one system's LoRA adapter as a folder to ship, with its model card.

An experiment's best run is what a team wants to hand on, but its store folder names a base model by a
path of the machine that trained it and says nothing of how well it did. The exported folder holds the
adapter's weights as stored, PEFT's `adapter_config.json` naming the base by its published name, the
adapter card `reviewstack-merge` reads (PI factor, lengths, lineage, evaluation numbers) and a README
model card: data, training (the learning-rate selection included), losses and the evaluation with its
intervals, beside the untrained base and the human reviewers of the same papers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2

from reviewstack.common.adapter_card import AdapterCard
from reviewstack.common.errors import FailedPrecondition, InvalidArgument, NotFound
from reviewstack.common.store import ArtifactStore
from reviewstack.experiment.spec import ExperimentSpec

EMBEDDED_BASE_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
WEIGHTS = "adapter_model.safetensors"

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("reviewstack.experiment", "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def export_adapter(
    store: ArtifactStore, experiment: str, system: str, out: Path, base_name: str | None = None
) -> AdapterCard:
    """Write `out/` from the experiment's state, report and the system's run; the card written."""
    state_key, report_key = f"experiments/{experiment}/state.json", f"experiments/{experiment}/report.json"
    if not store.exists(state_key):
        raise NotFound(f"no experiment {experiment!r} in {store.uri_for('experiments')}")
    if not store.exists(report_key):
        raise FailedPrecondition(
            f"experiment {experiment} has no report yet: run it to the end (`reviewstack experiment run`); "
            "the model card carries its evaluation numbers"
        )
    state = json.loads(store.get_bytes(state_key))
    report = json.loads(store.get_bytes(report_key))
    spec = ExperimentSpec(**state["spec"])
    chosen = spec.all_systems().get(system)
    if chosen is None or chosen.run is None:
        trained = ", ".join(n for n, s in spec.all_systems().items() if s.run)
        raise InvalidArgument(f"{system!r} is not a trained system of {experiment}: choose one of {trained}")
    scored = next((s for s in report["systems"] if s["name"] == system), None)
    review = state["steps"].get(f"review:{system}")
    if scored is None or review is None:
        raise FailedPrecondition(f"{system} was not reviewed and evaluated in {experiment}'s report")
    run = review["model"]  # runs/<run-id>: the run its reviews were written by
    run_spec = json.loads(store.get_bytes(f"{run}/spec.json"))
    if run_spec.get("method") not in ("lora", "qlora"):
        raise FailedPrecondition(
            f"{system} is a {run_spec.get('method')} fine-tune: it has no adapter; ship {run}/merged instead"
        )
    for name in ("adapter_config.json", WEIGHTS):
        if not store.exists(f"{run}/best/{name}"):
            raise NotFound(f"{run}/best/{name} is not in the store: the run's best adapter is incomplete")
    merged = json.loads(store.get_bytes(f"{run}/merged/manifest.json"))
    status = json.loads(store.get_bytes(f"{run}/status.json"))
    dataset = spec.datasets[spec.runs[chosen.run].dataset]

    out.mkdir(parents=True, exist_ok=True)
    weights = store.download(f"{run}/best/{WEIGHTS}", out / WEIGHTS)  # verified against its hash
    config = json.loads(store.get_bytes(f"{run}/best/adapter_config.json"))
    embedded = spec.runs[chosen.run].base_model == "embedded"
    published = EMBEDDED_BASE_NAME if embedded else Path(str(config["base_model_name_or_path"])).name
    config["base_model_name_or_path"] = base_name or published  # not a path of the training machine
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    card = AdapterCard(
        base_model=config["base_model_name_or_path"],
        position_interpolation=float(merged["pi_factor"]),
        target_context=run_spec["target_context"],
        max_prompt_length=run_spec["max_prompt_length"],
        max_response_length=run_spec["max_response_length"],
        aspects=dataset.aspects,
        lineage={
            "experiment": experiment,
            "spec_sha256": state.get("spec_sha256"),
            "system": system,
            "run": run,
            "dataset": state["steps"][f"data:{spec.runs[chosen.run].dataset}"]["dataset"],
            "best_step": status.get("best", {}).get("step"),
            "best_val_loss": status.get("best", {}).get("val_loss"),
            "steps": status.get("step"),
            "learning_rate": run_spec.get("learning_rate"),
            "decoding": scored.get("decoding"),  # what the evaluation's reviews were written with
            "weights": {"file": WEIGHTS, "sha256": weights.sha256, "dtypes": _dtypes_of(out / WEIGHTS)},
            "evaluation": report["evaluation"]["id"],
        },
        evaluation=_numbers(scored),
    )
    card.write(out)
    readme = _ENV.get_template("model-card.md.j2").render(
        card=card,
        run_spec=run_spec,
        status=status,
        spec=spec,
        report=report,
        system=scored,
        selection=_selection_of(spec, state, chosen.run),
        base=next((s for s in report["systems"] if s["model"].startswith("base")), None),
        split=state["steps"][f"data:{spec.runs[chosen.run].dataset}"].get("counts", {}),
    )
    (out / "README.md").write_text(readme)
    return card


def _dtypes_of(path: Path) -> list[str]:
    """The shipped file's tensor types: a GPU run brings its adapters back in bf16, so they are not the
    fp32 file the run's manifest lists, and the card says which one the reviews came from."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as weights:
        return sorted({weights.get_slice(name).get_dtype() for name in weights.keys()})  # noqa: SIM118 (not iterable)


def _numbers(scored: dict[str, Any]) -> dict[str, Any]:
    keep = ("papers", "hits", "precision", "recall", "items_per_review", "declined_rate", "not_written_rate")
    return {k: scored[k] for k in keep} | {"well_formed": scored.get("well_formed")}


def _selection_of(spec: ExperimentSpec, state: dict[str, Any], run: str) -> dict[str, Any] | None:
    """The learning-rate (or other) selection this run was made by or took its values from."""
    source = spec.runs[run].selection_of or run
    step = state["steps"].get(f"select:{source}")
    if step is None:
        return None
    return {"source": source, "by": step["by"], "chosen_run": step["run"], "candidates": step["candidates"]}
