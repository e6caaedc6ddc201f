"""The report renders: report.json round-trips, the PNGs are valid images, and report.html is one
self-contained page (tables present, figures embedded, nothing fetched from elsewhere)."""

from __future__ import annotations

import base64
import io
import json
import struct
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from matplotlib import image as mpimg

from reviewstack.common.errors import InvalidArgument
from reviewstack.common.store import LocalStore
from reviewstack.evaluation import plots
from reviewstack.evaluation.evaluate import evaluate
from reviewstack.evaluation.model import Exclusion
from reviewstack.evaluation.report import render_html, write_report

from .toys import HUMAN, ExactMatcher, free, humans, system, toy_systems

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """What a test needs to know about a page: its tags, section ids, image sources and outside links."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.external: list[str] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"] or "")
        if tag == "img":
            self.images.append(values.get("src") or "")
        for name in ("src", "href"):
            link = values.get(name) or ""
            if link.startswith(("http:", "https:", "//")):
                self.external.append(link)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, str], Path]:
    report = evaluate(
        toy_systems(),
        humans(HUMAN),
        ExactMatcher(),
        exclusions=[Exclusion("p7", "not in the ground truth")],
        bootstrap=100,
    )
    report["eval_id"] = "20260101-000000-abcd1234"
    root = tmp_path_factory.mktemp("store")
    uris = write_report(report, LocalStore(root), "evaluations/e1")
    return report, uris, root / "evaluations" / "e1"


def test_files_and_uris(written: tuple[dict[str, Any], dict[str, str], Path]) -> None:
    report, uris, folder = written
    assert uris["report_json"].endswith("/evaluations/e1/report.json")
    assert uris["report_html"].endswith("/evaluations/e1/report.html")
    plots = sorted(k for k in uris if k.startswith("plots/"))
    # the toy's human points carry no aspects: no recall-by-aspect figure; one λ sweep
    assert plots == [
        "plots/aspects_precision.png",
        "plots/empty_aspects.png",
        "plots/items_per_aspect.png",
        "plots/items_per_review.png",
        "plots/pairwise.png",
        "plots/summary.png",
        "plots/sweep_1.png",
    ]
    assert json.loads((folder / "report.json").read_text()) == json.loads(json.dumps(report))
    for name in plots:
        data = (folder / name).read_bytes()
        width, height = _png_size(data)
        assert width > 300 and height > 100
        assert mpimg.imread(io.BytesIO(data), format="png").shape[:2] == (height, width)


def test_html_is_self_contained_with_tables_and_embedded_figures(
    written: tuple[dict[str, Any], dict[str, str], Path],
) -> None:
    _, uris, folder = written
    page = Page((folder / "report.html").read_text())
    assert {
        "summary",
        "aspects",
        "statistics",
        "pairwise",
        "sweep",
        "papers",
        "inputs",
        "exclusions",
    } <= page.ids
    assert page.tags["table"] >= 10
    assert page.tags.get("script", 0) == 0 and page.tags.get("link", 0) == 0
    assert page.external == []
    embedded = []
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        embedded.append(base64.b64decode(src.split(",", 1)[1]))
    on_disk = {(folder / k).read_bytes() for k in uris if k.startswith("plots/")}
    assert set(embedded) == on_disk  # every figure written is shown, and only those


def test_html_says_what_a_reader_needs(written: tuple[dict[str, Any], dict[str, str], Path]) -> None:
    _, _, folder = written
    text = " ".join(" ".join(Page((folder / "report.html").read_text()).text).split())
    for needed in (
        "20260101-000000-abcd1234",
        "ft-0",
        "human (leave-one-out)",
        "Liang et al. (2023)",
        "≈35% human–human",
        "Like for like with the human anchor",
        "λ = 2.0",
        "no aspect structure",  # gpt and the human set have none
        "not JSON",  # the loader's exclusion
        "not in the ground truth",  # the caller's
        "one human review only: no leave-one-out",
        "matcher exact test-1",
        "agrees with GPT-4 at F1 1.00",  # the matcher's measured agreement, in the header
        "Matcher agreement F1 1.000 with the tests' own labels, exact text",
    ):
        assert needed in text, needed
    assert "−" in text  # negative differences carry a real minus sign


def test_the_agreement_interval_is_shown_when_the_matcher_measured_one() -> None:
    """A matcher's agreement is an estimate from 30 papers: its interval goes beside it in the report."""

    class MeasuredMatcher(ExactMatcher):
        def describe(self) -> dict[str, Any]:
            agreement = super().describe()["agreement"]
            return {"agreement": {**agreement, "f1": 0.292, "interval": [0.223, 0.354]}}

    report = evaluate([system("gpt", [free("p1", "a b")])], humans(HUMAN), MeasuredMatcher())
    text = " ".join(" ".join(Page(render_html(report, {})).text).split())
    assert "Matcher agreement F1 0.292 (95 % interval over papers 0.22–0.35)" in text


def test_a_single_free_text_system_renders_without_empty_sections(tmp_path: Path) -> None:
    report = evaluate([system("gpt", [free("p1", "a b"), free("p2", "x")])], humans(HUMAN), ExactMatcher())
    page = Page(render_html(report, {}))
    text = " ".join(" ".join(page.text).split())
    assert "sweep" not in page.ids
    assert "no aspect structure" in text
    assert "No system's points carry aspects" in text
    assert page.images == []  # no figures were passed


def test_bad_prefix_is_refused(tmp_path: Path, written: tuple[dict[str, Any], dict[str, str], Path]) -> None:
    with pytest.raises(InvalidArgument, match="absolute"):
        write_report(written[0], LocalStore(tmp_path), "/evaluations/e2")


def test_without_a_human_anchor_the_figures_and_page_still_render() -> None:
    single = humans({"p1": ["a b c"], "p2": ["x y"], "p3": ["q"]})  # one reviewer each: no leave-one-out
    report = evaluate(toy_systems()[:2], single, ExactMatcher(), bootstrap=50)
    assert report["human"]["overall"]["papers"] == 0
    figures = plots.render_all(report)
    assert {"summary.png", "pairwise.png", "sweep_1.png"} <= set(figures)
    text = " ".join(" ".join(Page(render_html(report, figures)).text).split())
    assert "there is no human anchor" in text
    assert "Like for like" not in text
