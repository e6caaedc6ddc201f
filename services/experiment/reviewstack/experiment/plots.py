"""The experiment report's figures as PNG bytes: the comparisons as paired differences with their
intervals, the λ sweep, and each run's training curves (best step marked)."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: figures are files
import matplotlib.pyplot as plt


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def comparisons(report: dict[str, Any]) -> bytes | None:
    rows = [c for c in report["comparisons"] if "hits" in c]
    if not rows:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(10, 0.55 * len(rows) + 1.4), sharey=True)
    labels = [f"{c['a']} − {c['b']}" for c in rows]
    for ax, criterion, title in zip(
        axes, ("hits", "precision"), ("hits per paper", "precision"), strict=True
    ):
        for y, c in enumerate(rows):
            d = c[criterion]
            if d["mean_difference"] is None:
                continue
            low = d["difference_low"] if d["difference_low"] is not None else d["mean_difference"]
            high = d["difference_high"] if d["difference_high"] is not None else d["mean_difference"]
            ax.errorbar(
                d["mean_difference"], y, xerr=[[d["mean_difference"] - low], [high - d["mean_difference"]]],
                fmt="o", color="#1f5f99", capsize=3,
            )  # fmt: skip
        ax.axvline(0, color="#999", lw=0.8)
        ax.set_title(f"A − B, {title} (95 % bootstrap interval)", fontsize=9)
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
    return _png(figure)


def sweep(report: dict[str, Any]) -> bytes | None:
    points = (report.get("sweep") or {}).get("points") or []
    if len(points) < 2:
        return None
    lambdas = [p["refusal_penalty"] for p in points]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    hits = [p["hits"]["mean"] for p in points]
    low = [
        p["hits"]["mean"] - (p["hits"]["low"] if p["hits"]["low"] is not None else p["hits"]["mean"])
        for p in points
    ]
    high = [
        (p["hits"]["high"] if p["hits"]["high"] is not None else p["hits"]["mean"]) - p["hits"]["mean"]
        for p in points
    ]
    left.errorbar(lambdas, hits, yerr=[low, high], fmt="o-", capsize=3, color="#1f5f99")
    left.set_xlabel("refusal penalty λ")
    left.set_ylabel("hits per paper (95 % interval)")
    right.plot(
        lambdas, [p["declined_rate"] or 0 for p in points], "o-", label="declined (<No related terms>)"
    )
    right.plot(lambdas, [p["not_written_rate"] or 0 for p in points], "s--", label="not written (budget)")
    right.set_xlabel("refusal penalty λ")
    right.set_ylabel("share of aspects")
    right.legend(fontsize=8)
    figure.suptitle(f"λ sweep of {report['sweep']['system']}", fontsize=10)
    return _png(figure)


def training_curves(report: dict[str, Any]) -> bytes | None:
    runs = [r for r in report["runs"] if r["curve"]]
    if not runs:
        return None
    columns = min(2, len(runs))
    rows = (len(runs) + columns - 1) // columns
    figure, axes = plt.subplots(
        rows, columns, figsize=(5 * columns, 3 * rows), squeeze=False, layout="constrained"
    )
    for ax, run in zip(axes.flat, runs, strict=False):
        train = [(p["step"], p["loss"]) for p in run["curve"] if p.get("loss") is not None]
        val = [(p["step"], p["val_loss"]) for p in run["curve"] if p.get("val_loss") is not None]
        if train:
            ax.plot(*zip(*train, strict=True), lw=1, label="train loss")
        if val:
            ax.plot(*zip(*val, strict=True), "o-", label="validation loss")
        best = run.get("best") or {}
        if best.get("step") is not None:
            ax.axvline(best["step"], color="#c33", lw=0.8, ls=":", label=f"best step {best['step']}")
        ax.set_title(run["name"] + (" (chosen)" if run.get("chosen") else ""), fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(runs) :]:
        ax.set_visible(False)
    return _png(figure)


def figures(report: dict[str, Any]) -> dict[str, bytes]:
    made = {
        "comparisons": comparisons(report),
        "sweep": sweep(report),
        "training": training_curves(report),
    }
    return {name: png for name, png in made.items() if png is not None}
