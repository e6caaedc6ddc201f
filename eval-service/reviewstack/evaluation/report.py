"""Write an evaluation: `report.json` (every number), `report.html` (for people) and `plots/*.png`.

The HTML is one self-contained file (figures embedded as base64, CSS inline, no external request) so it
can be mailed, attached to a ticket or opened from a bucket without a server. It is rendered from the
report dict alone: what a reader sees is exactly what report.json holds.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import jinja2

from reviewstack.common.errors import InvalidArgument
from reviewstack.common.store import ArtifactStore, check_prefix
from reviewstack.common.store.base import join_key
from reviewstack.evaluation import plots
from reviewstack.evaluation.review_stats import order_aspects

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("reviewstack.evaluation", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,  # a renamed report field fails the render instead of showing blank
    trim_blocks=True,
    lstrip_blocks=True,
)


def _pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f}"


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _interval(estimate: Mapping[str, Any], percent: bool = True, digits: int = 1) -> str:
    if estimate.get("low") is None:
        return ""
    fmt = _pct if percent else _num
    return f"{fmt(estimate['low'], digits)}–{fmt(estimate['high'], digits)}"


def _signed(value: float | None, digits: int = 2, scale: float = 1.0) -> str:
    """ "+1.40" / "−1.40" with a real minus sign, which lines up with the plus in a column."""
    if value is None:
        return "—"
    return f"{scale * value:+.{digits}f}".replace("-", "\u2212")


def _p(value: float | None) -> str:
    if value is None:
        return "—"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested lineage as `a.b: value` rows: a reader scans keys, not braces."""
    if isinstance(value, Mapping) and value:
        rows: list[tuple[str, Any]] = []
        for key, inner in value.items():
            rows += _flatten(inner, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(value, list | tuple):
        value = (
            ", ".join(map(str, value))
            if all(not isinstance(v, dict | list) for v in value)
            else json.dumps(value)
        )
    return [(prefix, value)] if prefix else []


_ENV.filters.update(
    pct=_pct, num=_num, signed=_signed, interval=_interval, p=_p, flatten=_flatten, aspect=plots.aspect_label
)


def render_html(report: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """The HTML page; `figures` are the PNGs of `plots.render_all`, embedded as data URIs."""
    images = {
        name: "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        for name, png in figures.items()
    }
    structured = [s for s in report["systems"] if s["statistics"].get("structured")]
    return _ENV.get_template("report.html.j2").render(
        r=report,
        images=images,
        colours=plots.colours(report),
        human_label=plots.human_label(report),
        structured=structured,
        stat_aspects=order_aspects({k for s in structured for k in s["statistics"]["per_aspect"]}),
        recall_aspects=order_aspects(
            {k for s in report["systems"] for k in s["overall"]["per_aspect"]["recall"]}
            | set(report["human"]["overall"]["per_aspect"]["recall"])
        ),
        precision_aspects=order_aspects(
            {k for s in report["systems"] for k in s["overall"]["per_aspect"]["precision"]}
        ),
    )


def write_report(report: dict[str, Any], store: ArtifactStore, prefix: str) -> dict[str, str]:
    """Write the figures, the HTML, then report.json last (its presence means the evaluation is
    complete). Returns URIs: `report_json`, `report_html`, and `plots/<name>.png` for each figure."""
    prefix = check_prefix(prefix)
    try:
        as_json = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False).encode() + b"\n"
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"the report holds a value JSON cannot store ({exc}); this is a bug to report"
        ) from exc
    figures = plots.render_all(report)
    uris: dict[str, str] = {}
    for name, png in figures.items():
        uris[f"plots/{name}"] = store.put_bytes(join_key(prefix, f"plots/{name}"), png).uri
    uris["report_html"] = store.put_bytes(
        join_key(prefix, "report.html"), render_html(report, figures).encode()
    ).uri
    uris["report_json"] = store.put_bytes(join_key(prefix, "report.json"), as_json).uri
    return uris
