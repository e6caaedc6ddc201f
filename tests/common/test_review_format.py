"""The review text format: exact round-trips, strict refusals, and the drift models show."""

import pytest

from reviewstack.common.aspects import EMPTY_ASPECT, AspectSchema
from reviewstack.common.errors import InvalidArgument
from reviewstack.common.review_format import parse, render

SEVEN = AspectSchema.SEVEN


def _aspects(**items):
    return {k: items.get(k, []) for k in SEVEN.keys}


@pytest.mark.parametrize(
    "aspects",
    [
        _aspects(idea=["A clear idea."], rejection=["Weak baselines.", "No ablation."]),
        _aspects(),  # all empty
        {k: [f"{k} point {i}" for i in range(3)] for k in SEVEN.keys},
        _aspects(other=["Uses $x_1 - y$ notation: fine.", "- a dash inside"]),
    ],
)
def test_render_parse_round_trip(aspects):
    text = render(aspects)
    parsed = parse(text)
    expected = {k: v or [EMPTY_ASPECT] for k, v in aspects.items()}
    assert parsed.aspects == expected
    assert render({k: [] if v == [EMPTY_ASPECT] else v for k, v in parsed.aspects.items()}) == text
    assert parsed.empty_aspects == [k for k, v in aspects.items() if not v]


def test_render_writes_every_aspect_in_order_with_the_marker():
    text = render(_aspects(experiments=["Strong results."]))
    lines = [line for line in text.splitlines() if line and not line.startswith("- ")]
    assert lines == [f"{i}. {a.criterion}" for i, a in enumerate(SEVEN.aspects, start=1)]
    assert text.count(f"- {EMPTY_ASPECT}") == 6


def test_four_aspect_schema_round_trips():
    four = AspectSchema.FOUR
    aspects = {"significance": ["Novel."], "acceptance": [], "rejection": ["Small."], "suggestions": []}
    assert parse(render(aspects, four), four).aspects["rejection"] == ["Small."]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("intro line\n" + render(_aspects()), "before the first aspect"),
        (render(_aspects()).replace("- <No related terms>", "* star bullet", 1), "not a '- ' item"),
        (render(_aspects()).split("\n\n7.")[0], "missing"),
        (render(_aspects()) + "\n\n1. How to evaluate the idea of the paper\n- again", "twice"),
    ],
)
def test_strict_parse_refuses_what_render_never_writes(text, problem):
    with pytest.raises(InvalidArgument, match=problem):
        parse(text)


def test_tolerant_parse_accepts_model_drift():
    text = (
        "Here is my review.\nIt is short.\n\n"
        "**1. How to evaluate the idea of the paper:**\n* The idea is neat\n  and well motivated.\n"
        "## 2. Compared to previous similar works\n1) Incremental over prior work.\n"
        "3. How to evaluate the experimental results in the paper\n- <No related terms>\n"
        "5. Potential reasons for rejection\n- Weak baselines.\n"
        "5. Potential reasons for rejection\n- No ablation.\n"
    )
    parsed = parse(text, strict=False)
    assert parsed.aspects["idea"] == ["The idea is neat and well motivated."]
    assert parsed.aspects["prior_work"] == ["Incremental over prior work."]
    assert parsed.aspects["experiments"] == [EMPTY_ASPECT]
    assert parsed.aspects["rejection"] == ["Weak baselines.", "No ablation."]
    assert parsed.aspects["acceptance"] == [EMPTY_ASPECT]  # never written: no points
    assert set(parsed.empty_aspects) == {"experiments", "acceptance", "suggestions", "other"}
    # only "experiments" was written and declined; the other three the text never reached
    assert parsed.missing == ["acceptance", "suggestions", "other"]
    assert parsed.refused_aspects == ["experiments"]
    assert any("repeated" in w for w in parsed.warnings)
    assert any("never written" in w for w in parsed.warnings)
    # the preamble is warned about once, not once per line
    assert parsed.warnings[0] == "text before the first aspect heading ignored (2 lines)"
