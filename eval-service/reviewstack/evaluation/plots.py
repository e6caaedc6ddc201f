"""The report's figures, drawn from the report dict alone (so a stored report.json can be re-plotted).

Figures are built with `matplotlib.figure.Figure`, never pyplot: no global figure registry, nothing a
server running two evaluations at once could mix up, and the Agg renderer without a display. Each system
keeps one colour in every figure; humans are grey and hatched, because their numbers are scored in the
leave-one-out frame and should not read as one more system.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reviewstack.evaluation.review_stats import order_aspects

HUMAN_COLOUR = "#8a8f98"
OUTCOME_COLOURS = {"wins": "#3b8f5a", "ties": "#c9ccd1", "losses": "#c8553d"}
_PALETTE = ["#3266a8", "#e08a2c", "#7b4fa8", "#2a9d8f", "#c44e52", "#8c6d31", "#d16fb0", "#5a7d2a"]
_STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#5f6368",
    "axes.grid": True,
    "grid.color": "#e4e6ea",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
    "legend.frameon": False,
    "figure.dpi": 150,
}
# Every figure has the same width, so that the HTML shows them all at one scale (one font size).
WIDTH = 9.6


def colours(report: dict[str, Any]) -> dict[str, str]:
    """System name → colour, in the report's system order (so it is stable across figures and runs)."""
    out = {s["name"]: _PALETTE[i % len(_PALETTE)] for i, s in enumerate(report["systems"])}
    out[report["human"]["name"]] = HUMAN_COLOUR
    return out


def p_text(p: float | None) -> str:
    if p is None:
        return "no test"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def human_label(report: dict[str, Any]) -> str:
    return f"{report['human']['name']} (leave-one-out)"


def aspect_label(key: str) -> str:
    return key.replace("_", " ").capitalize()


def _styled(draw: Callable[..., bytes | None]) -> Callable[..., bytes | None]:
    """Draw under the report's style: matplotlib reads most style settings while a figure is built and
    drawn, so the whole function runs inside the style context."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> bytes | None:
        with matplotlib.rc_context(_STYLE):
            return draw(*args, **kwargs)

    return wrapper


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer, metadata={"Software": None})
    return buffer.getvalue()


def _figure(height: float, rows: int = 1, cols: int = 1, **kw: Any) -> tuple[Figure, Any]:
    fig = Figure(figsize=(WIDTH, height), layout="constrained", facecolor="white")
    return fig, fig.subplots(rows, cols, squeeze=False, **kw)


def _error(estimate: dict[str, Any], scale: float) -> tuple[float, float]:
    if estimate.get("low") is None:
        return 0.0, 0.0
    mean = estimate["mean"]
    return (mean - estimate["low"]) * scale, (estimate["high"] - mean) * scale


@_styled
def summary(report: dict[str, Any]) -> bytes:
    """Hits, recall, precision and F1 per system with 95% intervals, humans below as the anchor."""
    palette = colours(report)
    rows = [(s["name"], s["overall"], palette[s["name"]], False) for s in report["systems"]]
    rows.append((human_label(report), report["human"]["overall"], HUMAN_COLOUR, True))
    panels = [
        ("hits", "Hits per paper", 1.0),
        ("recall", "Recall (%)", 100.0),
        ("precision", "Precision (%)", 100.0),
        ("f1", "F1 (%)", 100.0),
    ]
    fig, axes = _figure(0.9 + 0.42 * len(rows), 1, len(panels), sharey=True)
    y = list(range(len(rows)))[::-1]
    for ax, (metric, title, scale) in zip(axes[0], panels, strict=True):
        for yi, (_, overall, colour, is_human) in zip(y, rows, strict=True):
            estimate = overall[metric]
            if estimate["mean"] is None:
                continue
            low, high = _error(estimate, scale)
            ax.barh(
                yi,
                estimate["mean"] * scale,
                color=colour,
                height=0.62,
                hatch="///" if is_human else None,
                edgecolor="white" if is_human else colour,
                xerr=[[low], [high]],
                error_kw={"ecolor": "#30343b", "capsize": 3, "elinewidth": 1},
            )
        ax.set_title(title, loc="left")
        ax.grid(axis="y", visible=False)
        ax.set_xlim(left=0)
        if scale == 100.0:
            ax.set_xlim(0, min(100, max(ax.get_xlim()[1], 10)))
    axes[0][0].set_yticks(y, [r[0] for r in rows])
    return _png(fig)


def _grouped_barh(
    ax: Any, groups: Sequence[str], series: Sequence[tuple[str, str, Sequence[float | None]]], scale: float
) -> None:
    """Horizontal bars: one group per aspect (top to bottom in the given order), one bar per series."""
    n = max(len(series), 1)
    height = 0.8 / n
    for i, (label, colour, values) in enumerate(series):
        positions = [len(groups) - 1 - g + 0.4 - height * (i + 0.5) for g in range(len(groups))]
        shown = [(p, v * scale) for p, v in zip(positions, values, strict=True) if v is not None]
        if shown:
            ax.barh(
                [p for p, _ in shown], [v for _, v in shown], height=height * 0.92, color=colour, label=label
            )
    ax.set_yticks(range(len(groups))[::-1], [aspect_label(g) for g in groups])
    ax.grid(axis="y", visible=False)
    ax.set_ylim(-0.5, len(groups) - 0.5)
    if len(series) > 1:  # outside the axes: a legend inside would sit on some aspect's bars
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)


def _bars_height(groups: int, series: int) -> float:
    return 0.7 + 0.2 * groups * max(series, 2)


def _xlim_percent(ax: Any, values: Sequence[float | None]) -> None:
    """Up to the largest value plus room, not always 100: small differences stay visible."""
    top = max([v for v in values if v is not None] or [0.0]) * 100
    ax.set_xlim(0, min(100, max(10, top * 1.15)))


@_styled
def per_aspect(report: dict[str, Any], which: str) -> bytes | None:
    """Recall by the human points' aspects, or precision by the generated points' aspects (macro)."""
    palette = colours(report)
    series_src = [(s["name"], s["overall"]["per_aspect"][which]) for s in report["systems"]]
    keys = order_aspects({k for _, per in series_src for k in per})
    if not keys:
        return None
    series = [(name, palette[name], [per.get(k, {}).get("mean") for k in keys]) for name, per in series_src]
    if which == "recall":
        human = report["human"]["overall"]["per_aspect"]["recall"]
        series.append((human_label(report), HUMAN_COLOUR, [human.get(k, {}).get("mean") for k in keys]))
    fig, axes = _figure(_bars_height(len(keys), len(series)))
    ax = axes[0][0]
    _grouped_barh(ax, keys, series, 100.0)
    _xlim_percent(ax, [v for _, _, values in series for v in values])
    ax.set_xlabel(f"{which.capitalize()} (%), mean over papers with points of the aspect")
    return _png(fig)


def _structured(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(s["name"], s["statistics"]) for s in report["systems"] if s["statistics"].get("structured")]


@_styled
def items_per_review(report: dict[str, Any]) -> bytes | None:
    """The distribution of items per review, one small panel per system (humans per reviewer)."""
    palette = colours(report)
    entries = [(s["name"], s["statistics"]) for s in report["systems"]]
    entries.append((f"{report['human']['name']} (each reviewer)", report["human"]["statistics"]))
    entries = [(n, st) for n, st in entries if st["items_per_review"]["counts"]]
    if not entries:
        return None
    fig, axes = _figure(0.5 + 1.1 * len(entries), len(entries), 1, sharex=True)
    for ax, (name, stats) in zip(axes[:, 0], entries, strict=True):
        dist = stats["items_per_review"]
        colour = palette.get(name, HUMAN_COLOUR)
        ax.bar(range(len(dist["counts"])), dist["counts"], width=0.85, color=colour)
        ax.axvline(dist["mean"], color="#30343b", linewidth=1, linestyle="--")
        ax.set_title(f"{name}: mean {dist['mean']:.1f} items over {stats['reviews']} reviews", loc="left")
        ax.set_ylabel("reviews")
        ax.grid(axis="x", visible=False)
    axes[-1][0].set_xlabel("items in a review")
    return _png(fig)


@_styled
def empty_aspects(report: dict[str, Any]) -> bytes | None:
    """How many aspects a review leaves empty: the distribution, and the empty rate of each aspect."""
    palette = colours(report)
    entries = _structured(report)
    if not entries:
        return None
    fig, axes = _figure(_bars_height(7, len(entries)), 1, 2)
    left, right = axes[0]
    width = 0.8 / len(entries)
    most = max(len(st["empty_aspects_per_review"]["counts"]) for _, st in entries)
    for i, (name, stats) in enumerate(entries):
        counts = stats["empty_aspects_per_review"]["counts"]
        shares = [100 * c / stats["reviews"] for c in counts]
        xs = [k - 0.4 + width * (i + 0.5) for k in range(len(counts))]
        left.bar(xs, shares, width=width * 0.92, color=palette[name], label=name)
    left.set_xticks(range(most))
    left.set_xlabel("empty aspects in a review")
    left.set_ylabel("reviews (%)")
    left.set_title("Empty aspects per review", loc="left")
    left.grid(axis="x", visible=False)
    keys = order_aspects({k for _, st in entries for k in st["per_aspect"]})
    series = [
        (name, palette[name], [st["per_aspect"].get(k, {}).get("empty_rate") for k in keys])
        for name, st in entries
    ]
    _grouped_barh(right, keys, series, 100.0)
    _xlim_percent(right, [v for _, _, values in series for v in values])
    right.set_xlabel("reviews with the aspect empty (%)")
    right.set_title("Empty rate per aspect", loc="left")
    return _png(fig)


@_styled
def items_per_aspect(report: dict[str, Any]) -> bytes | None:
    """Mean items each aspect holds, per structured system."""
    palette = colours(report)
    entries = _structured(report)
    if not entries:
        return None
    keys = order_aspects({k for _, st in entries for k in st["per_aspect"]})
    series = [
        (name, palette[name], [st["per_aspect"].get(k, {}).get("items_per_review") for k in keys])
        for name, st in entries
    ]
    fig, axes = _figure(_bars_height(len(keys), len(series)))
    _grouped_barh(axes[0][0], keys, series, 1.0)
    axes[0][0].set_xlabel("items per review")
    return _png(fig)


@_styled
def pairwise(report: dict[str, Any]) -> bytes | None:
    """Win / tie / loss shares per comparison, on hits and on precision, with counts and sign-test p."""
    comparisons = report["pairwise"]
    if not comparisons:
        return None
    labels = [
        f"{c['a']} vs {c['b']}" + (" (LOO)" if c["frame"] == "leave-one-out" else "") for c in comparisons
    ]
    fig, axes = _figure(1.1 + 0.42 * len(comparisons), 1, 2, sharey=True)
    y = list(range(len(comparisons)))[::-1]
    for ax, criterion in zip(axes[0], ("hits", "precision"), strict=True):
        for yi, c in zip(y, comparisons, strict=True):
            result, start = c[criterion], 0.0
            total = result["wins"] + result["ties"] + result["losses"]
            for outcome in ("wins", "ties", "losses"):
                share = 100 * result[outcome] / total if total else 0.0
                ax.barh(yi, share, left=start, color=OUTCOME_COLOURS[outcome], height=0.6, label=outcome)
                if result[outcome]:
                    text_colour = "white" if outcome != "ties" else "#30343b"
                    ax.text(
                        start + share / 2,
                        yi,
                        str(result[outcome]),
                        ha="center",
                        va="center",
                        color=text_colour,
                    )
                start += share
            p = result["p_value"]
            ax.text(101, yi, p_text(p), va="center", fontsize=9)
        ax.set_xlim(0, 100)
        ax.set_xlabel("papers (%)")
        ax.set_title(f"On {criterion}", loc="left")
        ax.grid(visible=False)
    axes[0][0].set_yticks(y, labels)
    handles, names = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=True))
    fig.legend(unique.values(), unique.keys(), loc="outside lower center", ncols=3)
    return _png(fig)


@_styled
def sweep(report: dict[str, Any], index: int) -> bytes:
    """One penalty sweep: empty-aspect rate, hits, and recall / precision against λ, with intervals."""
    points = report["penalty_sweeps"][index]["points"]
    lambdas = [p["refusal_penalty"] for p in points]
    fig, axes = _figure(3.0, 1, 3)
    empty_ax, hits_ax, rp_ax = axes[0]
    rates = [100 * p["empty_aspect_rate"] if p["empty_aspect_rate"] is not None else math.nan for p in points]
    empty_ax.plot(lambdas, rates, marker="o", color="#30343b")
    empty_ax.set_title("Empty aspects (%)", loc="left")
    _band(hits_ax, lambdas, [p["hits"] for p in points], 1.0, "#3266a8", "hits per paper")
    hits_ax.set_title("Hits per paper", loc="left")
    _band(rp_ax, lambdas, [p["recall"] for p in points], 100.0, "#3266a8", "recall")
    _band(rp_ax, lambdas, [p["precision"] for p in points], 100.0, "#e08a2c", "precision")
    rp_ax.set_title("Recall and precision (%)", loc="left")
    rp_ax.legend(fontsize=9)
    for ax in axes[0]:
        ax.set_xlabel("refusal penalty λ")
        ax.set_xticks(lambdas)
        ax.set_ylim(bottom=0)
    return _png(fig)


def _band(
    ax: Any, xs: Sequence[float], estimates: Sequence[dict[str, Any]], scale: float, colour: str, label: str
) -> None:
    means = [e["mean"] * scale if e["mean"] is not None else math.nan for e in estimates]
    ax.plot(xs, means, marker="o", color=colour, label=label)
    if all(e.get("low") is not None for e in estimates):
        ax.fill_between(
            xs,
            [e["low"] * scale for e in estimates],
            [e["high"] * scale for e in estimates],
            color=colour,
            alpha=0.15,
        )


def render_all(report: dict[str, Any]) -> dict[str, bytes]:
    """Every figure the report has data for: file name → PNG bytes (figures with no data are absent)."""
    figures: dict[str, Callable[[], bytes | None]] = {
        "summary.png": lambda: summary(report),
        "aspects_recall.png": lambda: per_aspect(report, "recall"),
        "aspects_precision.png": lambda: per_aspect(report, "precision"),
        "items_per_review.png": lambda: items_per_review(report),
        "empty_aspects.png": lambda: empty_aspects(report),
        "items_per_aspect.png": lambda: items_per_aspect(report),
        "pairwise.png": lambda: pairwise(report),
    }
    for i in range(len(report["penalty_sweeps"])):
        figures[f"sweep_{i + 1}.png"] = lambda i=i: sweep(report, i)
    out = {}
    for name, draw in figures.items():
        png = draw()
        if png is not None:
            out[name] = png
    return out
