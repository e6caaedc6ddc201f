"""The experiment report: `experiments/<id>/report.json` (every number) and `report.html` (one
self-contained page: figures embedded, no external request), both built from the experiment's state,
its evaluation's report.json and its runs' metrics.

The evaluation already scores every pair of systems; this report picks the comparisons the spec names
(the method's table), puts precision and items per review beside hits so a chatty system cannot win by
volume, splits empty aspects into declined (`<No related terms>`) and not written (the token budget ran
out), and adds what only the experiment knows: the training curves of its runs and the λ sweep.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jinja2

from reviewstack.common.store import ArtifactStore
from reviewstack.experiment import plots
from reviewstack.experiment.spec import ExperimentSpec, SystemSpec, sweep_name

REPORT_FORMAT = "reviewstack.experiment.report/1"

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("reviewstack.experiment", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _signed(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    text = f"{value + 0.0:+.{digits}f}"  # + 0.0: a negative zero reads as zero
    return "+" + text[1:] if float(text) == 0 else text.replace("-", "\u2212")


def _p(value: float | None) -> str:
    return "—" if value is None else ("< 0.001" if value < 0.001 else f"{value:.3f}")


_ENV.filters.update(num=_num, pct=_pct, signed=_signed, p=_p)


def build_report(
    spec: ExperimentSpec, state: dict[str, Any], evaluation: dict[str, Any], metrics: dict[str, list[dict]]
) -> dict[str, Any]:
    """The report's numbers, from the evaluation's report and the runs' metrics.jsonl lines."""
    steps = planned_steps(state)
    systems_spec = spec.all_systems()
    by_name = {s["name"]: s for s in evaluation["systems"]}
    human = evaluation["human"]
    systems = []
    for name, system in systems_spec.items():
        scored = by_name.get(name)
        if scored is None:
            continue
        stats = scored["statistics"]
        review = steps.get(f"review:{name}", {})
        systems.append(
            {
                "name": name,
                "model": f"run {system.run}" if system.run else f"base ({system.base})",
                "refusal_penalty": system.refusal_penalty,
                "decoding": _decoding(spec, steps, name, system),
                "papers": scored["overall"]["papers"],
                "hits": scored["overall"]["hits"],
                "precision": scored["overall"]["precision"],
                "recall": scored["overall"]["recall"],
                "items_per_review": stats["items_per_review"]["mean"],
                "declined_rate": stats.get("empty_aspect_rate"),
                "not_written_rate": stats.get("missing_aspect_rate"),
                "per_aspect": stats.get("per_aspect", {}),
                "well_formed": _well_formed(stats),
                "reviews": review.get("reviews"),
                "tokens_per_s": review.get("tokens_per_s"),
            }
        )
    skipped = set(state.get("skipped", []))
    left_out = skipped | {n for n, s in systems_spec.items() if s.run in skipped}
    comparisons = [
        _comparison(c.model_dump(), evaluation["pairwise"])
        if not {c.a, c.b} & left_out
        else {**c.model_dump(), "missing": f"not made: {', '.join(sorted({c.a, c.b} & left_out))} skipped"}
        for c in spec.comparisons
    ]
    runs = [
        _run_summary(label, name, spec, steps, metrics.get(label, [])) for label, name in _trainings(spec)
    ]
    selections = [
        {"run": name, "parameters": sorted(run.select), **_selection(steps.get(f"select:{name}", {}))}
        for name, run in spec.runs.items()
        if run.select
    ]
    decoding_choices = [
        {"system": name, **{k: step.get(k) for k in ("by", "chosen", "candidates")}}
        for name in systems_spec
        if (step := steps.get(f"choose:{name}"))
    ]
    sweep = None
    if spec.sweep is not None:
        names = {
            value: spec.sweep.system
            if value == spec.systems[spec.sweep.system].refusal_penalty
            else sweep_name(spec.sweep.system, value)
            for value in spec.sweep.refusal_penalties
        }
        points = [
            {"refusal_penalty": value, **_sweep_point(by_name[name])}
            for value, name in sorted(names.items())
            if name in by_name
        ]
        sweep = {"system": spec.sweep.system, "points": points}
    return {
        "format": REPORT_FORMAT,
        "experiment": spec.id,
        "title": spec.title,
        "description": spec.description,
        "spec_sha256": state.get("spec_sha256"),
        "evaluation": {
            "id": evaluation.get("eval_id"),
            "papers": len(evaluation["papers"]),
            "matcher": evaluation["matcher"],
            "bootstrap": evaluation["settings"],
        },
        "human": {
            "hits": human["overall"]["hits"],
            "precision": human["overall"]["precision"],
            "recall": human["overall"]["recall"],
            "items_per_review": human["statistics"]["items_per_review"]["mean"],
            "papers": human["overall"]["papers"],
        },
        "systems": systems,
        "comparisons": comparisons,
        "runs": runs,
        "selections": selections,
        "decoding_choices": decoding_choices,
        "sweep": sweep,
        "skipped": sorted(skipped),
        "steps": steps,
        "exclusions": len(evaluation.get("exclusions", [])),
    }


def planned_steps(state: dict[str, Any]) -> dict[str, Any]:
    """The state's steps that the spec as last run makes (all of them in a state written before plans
    were recorded): a step of an earlier version of the spec stays in the state but not in reports."""
    plan = state.get("plan")
    steps = state.get("steps", {})
    return steps if plan is None else {name: steps[name] for name in plan if name in steps}


def _decoding(spec: ExperimentSpec, steps: dict[str, Any], name: str, system: SystemSpec) -> dict[str, Any]:
    """The decoding the system reviewed the evaluation papers with: the one its `choose:` step kept."""
    chosen = steps.get(f"choose:{name}", {}).get("chosen")
    return chosen if chosen is not None else spec.decoding_of(system).model_dump(mode="json")


def _well_formed(stats: dict[str, Any]) -> dict[str, Any] | None:
    """Share of reviews whose every aspect is written or declined and that the model ended itself: a
    review cut by the token budget is not well formed even when its last aspect had begun."""
    reviews, complete = stats.get("reviews"), stats.get("well_formed_reviews")
    if not reviews or complete is None:
        return None
    return {
        "reviews": reviews,
        "complete": complete,
        "cut_short": stats.get("cut_short_reviews"),
        "share": complete / reviews,
    }


def _comparison(comparison: dict[str, Any], pairwise: list[dict[str, Any]]) -> dict[str, Any]:
    """One named comparison A vs B from the evaluation's pairwise results, read from A's side."""
    a, b = comparison["a"], comparison["b"]
    frame = "leave-one-out" if "human" in (a, b) else "all human points"
    for entry in pairwise:
        if entry["frame"] != frame:
            continue
        if (entry["a"], entry["b"]) == (a, b):
            return {**comparison, "frame": frame, "papers": entry["papers"], **_criteria(entry, False)}
        if (entry["a"], entry["b"]) == (b, a):
            return {**comparison, "frame": frame, "papers": entry["papers"], **_criteria(entry, True)}
    return {**comparison, "frame": frame, "missing": "the evaluation holds no such pair"}


def _criteria(entry: dict[str, Any], flip: bool) -> dict[str, Any]:
    out = {}
    for criterion in ("hits", "precision"):
        c = entry[criterion]
        if flip:
            c = {
                **c,
                "wins": c["losses"],
                "losses": c["wins"],
                "mean_difference": None if c["mean_difference"] is None else -c["mean_difference"],
                "difference_low": None if c["difference_high"] is None else -c["difference_high"],
                "difference_high": None if c["difference_low"] is None else -c["difference_low"],
            }
        out[criterion] = {
            k: c.get(k)
            for k in (
                "papers", "wins", "ties", "losses", "p_value",
                "mean_difference", "difference_low", "difference_high",
            )
        }  # fmt: skip
    return out


def _trainings(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """(step label, run name) of every training the spec makes: a selecting run's candidates each."""
    return [(label, name) for name in spec.runs for label, _ in spec.candidates(name)]


def _selection(step: dict[str, Any]) -> dict[str, Any]:
    if not step:
        return {"made": False, "candidates": []}
    chosen = step.get("run")
    return {
        "made": True,
        "by": step.get("by"),
        "chosen": step.get("chosen"),
        "candidates": [
            {k: c.get(k) for k in ("label", "values", "run", "best", "steps", "validation")}
            | {"chosen": c["run"] == chosen}
            for c in step.get("candidates", [])
        ],
    }


def _run_summary(
    label: str, name: str, spec: ExperimentSpec, steps: dict, lines: list[dict]
) -> dict[str, Any]:
    run = spec.runs[name]
    step = steps.get(f"train:{label}", {})
    chosen = steps.get(f"select:{name}", {}).get("run")
    train = [line for line in lines if "loss" in line]
    speeds = [line["tokens_per_s"] for line in train if line.get("tokens_per_s")]
    return {
        "name": label,
        "of": name,
        "candidate": bool(run.select),
        "chosen": bool(run.select) and step.get("run") is not None and step.get("run") == chosen,
        "run": step.get("run"),
        "dataset": run.dataset,
        "aspects": spec.datasets[run.dataset].aspects,
        "config": run.config,
        "overrides": {**step.get("values", {}), **run.overrides},
        "best": step.get("best"),
        "steps": step.get("steps"),
        "seconds": step.get("seconds"),
        "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
        "peak_mem_gib": max((line.get("peak_mem_gib") or 0 for line in train), default=None),
        "curve": [{k: line.get(k) for k in ("step", "loss", "val_loss")} for line in lines if "step" in line],
    }


def _sweep_point(system: dict[str, Any]) -> dict[str, Any]:
    stats = system["statistics"]
    return {
        "system": system["name"],
        "hits": system["overall"]["hits"],
        "precision": system["overall"]["precision"],
        "declined_rate": stats.get("empty_aspect_rate"),
        "not_written_rate": stats.get("missing_aspect_rate"),
        "items_per_review": stats["items_per_review"]["mean"],
    }


def write_report(
    store: ArtifactStore, spec: ExperimentSpec, state: dict[str, Any], evaluation_key: str
) -> dict[str, str]:
    """Write experiments/<id>/{report.json, report.html, plots/*.png}; their store keys."""
    evaluation = json.loads(store.get_bytes(f"{evaluation_key}/report.json"))
    metrics = {}
    for label, _ in _trainings(spec):
        run = state["steps"].get(f"train:{label}", {}).get("run")
        if run and store.exists(f"{run}/metrics.jsonl"):
            text = store.get_bytes(f"{run}/metrics.jsonl").decode()
            metrics[label] = [json.loads(line) for line in text.splitlines() if line.strip()]
    report = build_report(spec, state, evaluation, metrics)
    figures = plots.figures(report)
    prefix = f"experiments/{spec.id}"
    for name, png in figures.items():
        store.put_bytes(f"{prefix}/plots/{name}.png", png)
    html = _ENV.get_template("report.html.j2").render(
        report=report,
        figures={name: base64.b64encode(png).decode() for name, png in figures.items()},
    )
    store.put_bytes(f"{prefix}/report.json", json.dumps(report, indent=1).encode())
    store.put_bytes(f"{prefix}/report.html", html.encode())
    # store keys, not URIs: state.json travels with the store (to another machine, into a repository)
    return {"json": f"{prefix}/report.json", "html": f"{prefix}/report.html"}
