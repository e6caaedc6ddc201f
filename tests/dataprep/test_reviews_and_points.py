"""Review records and human points, on real reviews of the bundled sample and on synthetic records."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from reviewstack.common.errors import InvalidArgument
from reviewstack.dataprep.points import extract_points, split_sentences
from reviewstack.dataprep.reviews import (
    HumanPoint,
    HumanReview,
    PaperReviews,
    has_recognisable_sections,
    parse_review_record,
    split_sections,
)

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "neurips2025-sample"
INDEX = {row["paper_id"]: row for row in csv.DictReader((SAMPLE / "index.csv").open(encoding="utf-8"))}


def sample_record(paper_id: str) -> PaperReviews:
    raw = json.loads((SAMPLE / "reviews" / f"{paper_id}.json").read_text(encoding="utf-8"))
    return parse_review_record(raw, source=f"sample/{paper_id}.json")


def review_of(comments: str, **extra: Any) -> HumanReview:
    record = parse_review_record({"id": "p1", "reviews": [{"comments": comments, **extra}]}, source="t.json")
    return record.reviews[0]


def sw_points(body: str) -> list[tuple[str, str]]:
    """(kind, text) of the STRENGTHS AND WEAKNESSES points of a review with this section body."""
    comments = f"SUMMARY:\nA paper about graphs.\n\nSTRENGTHS AND WEAKNESSES:\n{body}\n\nQUESTIONS:\nN/A"
    review = review_of(comments)
    return [(p.kind, p.text) for p in extract_points(review) if p.section == "strengths_and_weaknesses"]


# --- real reviews --------------------------------------------------------------------------------------


def test_geocad_record_fields() -> None:
    record = sample_record("0yowBBK6tT")
    assert record.paper_id == "0yowBBK6tT"
    assert record.title == "GeoCAD: Local Geometry-Controllable CAD Generation with Large Language Models"
    assert record.accepted is True
    assert record.decision == "Accept (poster)"  # from the meta-review, which is not an official review
    assert [r.reviewer_id for r in record.reviews] == ["R1", "R2", "R3", "R4"]
    first = record.reviews[0]
    assert first.scores == {
        "RECOMMENDATION": 5,
        "REVIEWER_CONFIDENCE": 1,
        "CLARITY": 3,
        "IMPACT": 3,
        "ORIGINALITY": 3,
    }
    assert list(first.sections) == ["summary", "strengths_and_weaknesses", "questions", "limitations"]
    assert first.sections["limitations"] == "Yes."


def test_geocad_first_review_points() -> None:
    points = extract_points(sample_record("0yowBBK6tT").reviews[0])
    assert [p.index for p in points] == list(range(len(points)))
    assert {p.reviewer_id for p in points} == {"R1"}
    by_kind: dict[str, list[HumanPoint]] = {}
    for p in points:
        by_kind.setdefault(p.kind, []).append(p)
    assert by_kind["summary"][0].text == (
        "This paper proposes GeoCAD, a local geometry controllable generation method."
    )
    assert len(by_kind["summary"]) == 4
    assert len(by_kind["strength"]) == 4 and len(by_kind["weakness"]) == 3
    assert by_kind["strength"][0].text.startswith("The motivation of this paper sounds reasonable.")
    assert by_kind["weakness"][0].text.startswith("The authors claim that VLLMs exhibit limitations")
    assert by_kind["weakness"][2].text.startswith("The LLM is fine-tuned using LoRA")
    assert len(by_kind["question"]) == 1
    assert "limitation" not in by_kind  # "Yes." is an answer, not a point
    assert not any(p.text.lower().startswith(("strengths", "weaknesses")) for p in points)


def test_rejected_paper_decision() -> None:
    record = sample_record("2lgVQRB4dh")
    assert record.accepted is False and record.decision == "Reject"
    assert len(record.reviews) == 4


@pytest.mark.parametrize("paper_id", sorted(INDEX))
def test_every_sample_record(paper_id: str) -> None:
    record = sample_record(paper_id)
    assert len(record.reviews) == int(INDEX[paper_id]["n_official_reviews"])
    assert record.decision == INDEX[paper_id]["decision"]
    all_points = []
    for review in record.reviews:
        assert has_recognisable_sections(review)
        points = extract_points(review)
        assert points
        all_points += points
        for p in points:
            assert len(p.text.split()) >= 4
            assert not p.text.startswith(("- ", "* ", "**", "#"))
            assert p.text.strip() not in ("Strengths:", "Weaknesses:", "Strengths", "Weaknesses")
    assert any(p.kind in ("strength", "weakness") for p in all_points)


def test_review_that_only_points_to_its_summary() -> None:
    """5nBwN6XQOD R2 writes everything in SUMMARY and "See my summary comment above." elsewhere."""
    review = sample_record("5nBwN6XQOD").reviews[1]
    assert review.sections["questions"] == "See my summary comment above."
    points = extract_points(review)
    assert {p.kind for p in points} == {"summary"} and len(points) == 6


def test_sample_strength_weakness_share() -> None:
    """On the 122 reviews of the sample, most S&W sections yield both strengths and weaknesses."""
    reviews = [r for pid in INDEX for r in sample_record(pid).reviews]
    both = sum({"strength", "weakness"} <= {p.kind for p in extract_points(r)} for r in reviews)
    assert len(reviews) == 122
    assert both / len(reviews) > 0.8


# --- sections ------------------------------------------------------------------------------------------


def test_sections_known_and_other_headers() -> None:
    text = (
        "SUMMARY OF THE PAPER:\nIt does X.\n\nSTRENGTH AND WEAKNESSES:\nGood.\n\n"
        "CLARITY, QUALITY, NOVELTY AND REPRODUCIBILITY:\nClear.\n\nQUESTIONS: Why?\n"
    )
    assert split_sections(text) == {
        "summary": "It does X.",
        "strengths_and_weaknesses": "Good.",
        "clarity_quality_novelty_and_reproducibility": "Clear.",
        "questions": "Why?",
    }


def test_capitals_inside_strengths_and_weaknesses_are_not_sections() -> None:
    sections = split_sections("STRENGTHS AND WEAKNESSES:\nPROS:\n- fast\nCONS:\n- slow\n\nQUESTIONS:\nWhy?")
    assert list(sections) == ["strengths_and_weaknesses", "questions"]
    assert "CONS:" in sections["strengths_and_weaknesses"]


def test_review_without_sections() -> None:
    review = review_of(
        "This paper proposes a new kernel for audio retrieval.\n\n"
        "The experiments are limited to two datasets and lack error bars."
    )
    assert review.sections == {} and not has_recognisable_sections(review)
    points = extract_points(review)
    assert [(p.section, p.kind) for p in points] == [("review", "other"), ("review", "other")]


# --- strengths / weaknesses ----------------------------------------------------------------------------

STRENGTH = "The method is clearly novel and well motivated."
WEAKNESS = "The evaluation covers only two small datasets."


STRENGTH_MARKERS = [
    "Strengths:",
    "**Strengths**",
    "### Strength",
    "Pros:",
    "[Strengths]",
    "Strengths：",
    "**Strengths:**",
    "- Strengths",
    "Advantages:",
    "Strengths (in order of importance):",
]
WEAKNESS_MARKERS = [
    "Weaknesses:",
    "Cons",
    "**Weaknesses:**",
    "## Weakness",
    "Major weaknesses:",
    "Minor:",
    "[Weaknesses]",
    "Concerns:",
    "Weaknesses and Questions:",
    "Weaknessess",
]


@pytest.mark.parametrize("strength_marker", STRENGTH_MARKERS)
@pytest.mark.parametrize("weakness_marker", WEAKNESS_MARKERS)
def test_marker_variants(strength_marker: str, weakness_marker: str) -> None:
    body = f"{strength_marker}\n- {STRENGTH}\n\n{weakness_marker}\n- {WEAKNESS}"
    assert sw_points(body) == [("strength", STRENGTH), ("weakness", WEAKNESS)]


@pytest.mark.parametrize(
    ("strength_line", "weakness_line"),
    [
        (f"S1: {STRENGTH}", f"W1: {WEAKNESS}"),
        (f"S1. {STRENGTH}", f"W2. {WEAKNESS}"),
        (f"(S1) {STRENGTH}", f"(W1) {WEAKNESS}"),
        (f"**S1** {STRENGTH}", f"**W1** {WEAKNESS}"),
        (f"Strengths: {STRENGTH}", f"Weaknesses: {WEAKNESS}"),
        (f"- **Strength:** {STRENGTH}", f"- **Weakness 2 (minor):** {WEAKNESS}"),
    ],
)
def test_labels_and_inline_markers(strength_line: str, weakness_line: str) -> None:
    assert sw_points(f"{strength_line}\n{weakness_line}") == [("strength", STRENGTH), ("weakness", WEAKNESS)]


def test_label_letters_need_a_separator() -> None:
    """ "L2 regularisation" and "W2 distance" are text, not labels."""
    body = "Weaknesses:\n- L2 regularisation is not tuned at all.\n- W2 distance is never defined here."
    assert sw_points(body) == [
        ("weakness", "L2 regularisation is not tuned at all."),
        ("weakness", "W2 distance is never defined here."),
    ]


def test_nested_bullets_join_their_parent() -> None:
    body = (
        "Weaknesses:\n1. Experimental evaluation is limited:\n   - only two datasets are used here\n"
        "   - no error bars are reported anywhere\n2. The writing needs another careful pass.\n"
        "* The theory does not match the method.\n\t* Definition 3 is never used in the proofs."
    )
    assert sw_points(body) == [
        (
            "weakness",
            "Experimental evaluation is limited: only two datasets are used here; no error bars are "
            "reported anywhere",
        ),
        ("weakness", "The writing needs another careful pass."),
        ("weakness", "The theory does not match the method. Definition 3 is never used in the proofs."),
    ]


def test_numbered_title_absorbs_its_explanation() -> None:
    """Aj3wL41C7p: a short numbered title, a blank line, then the paragraph that explains it."""
    body = (
        "**Weaknesses**\n\n1. Limited novelty of the method\n\n"
        "The method closely follows prior work [3] and only changes the loss.\n\n"
        "2. Missing baselines\n\nThere is no comparison to the two strongest recent methods."
    )
    assert sw_points(body) == [
        (
            "weakness",
            "Limited novelty of the method: The method closely follows prior work [3] and only "
            "changes the loss.",
        ),
        ("weakness", "Missing baselines: There is no comparison to the two strongest recent methods."),
    ]


def test_trivial_points_and_references_dropped() -> None:
    body = (
        "Weaknesses:\n- N/A\n- None\n- See above\n- yes\n- Too short here\n- Please refer to the questions.\n"
        "- This point is long enough to keep.\n\n"
        '[1] Yang, H., et al. "Accelerating inexact hypergradient descent." arXiv:2307.00126 (2023).'
    )
    assert sw_points(body) == [("weakness", "This point is long enough to keep.")]


def test_unmarked_paragraphs_use_opening_cue_or_other() -> None:
    body = (
        "The paper studies a timely question and is pleasant to read overall.\n\n"
        "My only concern is the runtime overhead, which is never measured.\n\n"
        "The main strength is the clean theoretical analysis of the estimator."
    )
    assert [kind for kind, _ in sw_points(body)] == ["other", "weakness", "strength"]


def test_long_paragraph_is_split_into_sentence_chunks() -> None:
    sentences = [f"Sentence number {i} explains one more detail of the method at length." for i in range(14)]
    points = sw_points("Weaknesses:\n" + " ".join(sentences))
    assert [len(split_sentences(text)) for _, text in points] == [3, 3, 3, 3, 2]
    assert " ".join(text for _, text in points) == " ".join(sentences)
    short = " ".join(sentences[:5])
    assert sw_points("Weaknesses:\n" + short) == [("weakness", short)]


# --- summary, questions, limitations -------------------------------------------------------------------


def test_summary_sentences_with_latex_and_abbreviations() -> None:
    review = review_of(
        "SUMMARY:\nThe paper bounds the error by $O(1/\\sqrt{n}). $ This is tight, e.g. in Fig. 3 of "
        "Smith et al. and i.e. Eq. (2). The authors evaluate on 3.5k graphs.\n\nQUESTIONS:\nWhy?"
    )
    summary = [p.text for p in extract_points(review) if p.kind == "summary"]
    assert summary == [
        "The paper bounds the error by $O(1/\\sqrt{n}). $ This is tight, e.g. in Fig. 3 of Smith et al. "
        "and i.e. Eq. (2).",
        "The authors evaluate on 3.5k graphs.",
    ]


def test_split_sentences_enumeration_and_urls() -> None:
    assert split_sentences("The main concerns are: 1. Lacking comparison. 2. Only in-domain tests.") == [
        "The main concerns are: 1. Lacking comparison.",
        "2. Only in-domain tests.",
    ]
    assert split_sentences("See https://example.com/a.b. Then J. Smith agrees. Done!") == [
        "See https://example.com/a.b.",
        "Then J. Smith agrees.",
        "Done!",
    ]


def test_question_labels_stripped() -> None:
    review = review_of("QUESTIONS:\nQ1: How is the threshold chosen in practice?\nQ2. Does it scale to 1B?")
    assert [(p.kind, p.text) for p in extract_points(review)] == [
        ("question", "How is the threshold chosen in practice?"),
        ("question", "Does it scale to 1B?"),
    ]


@pytest.mark.parametrize(
    ("limitations", "expected"),
    [
        ("yes", []),
        ("Yes.", []),
        ("Yes, the authors adequately addressed the limitations and potential negative societal impact.", []),
        ("The authors have discussed the limitations.", []),
        ("No negative social or ethical concerns.", []),
        ("See weaknesses.", []),
        ("Limitations are not sufficiently discussed.", ["Limitations are not sufficiently discussed."]),
        (
            "Yes, the authors discussed latency. But I think memory overhead should be discussed too.",
            ["But I think memory overhead should be discussed too."],
        ),
        ("No, limitations should be in the main text.", ["Limitations should be in the main text."]),
    ],
)
def test_limitation_boilerplate(limitations: str, expected: list[str]) -> None:
    review = review_of(f"SUMMARY:\nA paper.\n\nLIMITATIONS:\n{limitations}")
    points = [p for p in extract_points(review) if p.section == "limitations"]
    assert [p.text for p in points] == expected
    assert all(p.kind == "limitation" for p in points)


# --- record parsing ------------------------------------------------------------------------------------


def test_older_peerread_shape() -> None:
    raw = {
        "id": 304,
        "title": "A  Paper",
        "conference": "ICLR 2017",
        "reviews": [
            {"IS_META_REVIEW": True, "comments": "Reject.", "TITLE": "ICLR committee final decision"},
            {
                "comments": "Nice idea but the experiments are weak and small.",
                "RECOMMENDATION": "4",
                "REVIEWER_CONFIDENCE": "3.5",
                "SUBSTANCE": "8: Top 50% of accepted papers",
                "OTHER_KEYS": "x",
                "IS_ANNOTATED": False,
                "TITLE": "Interesting",
            },
            {"IS_META_REVIEW": False, "comments": "", "TITLE": "pre-review question"},
            {"comments": "Well written and the proofs look right to me overall.", "RECOMMENDATION": 7},
        ],
    }
    record = parse_review_record(raw, source="iclr.json")
    assert record.paper_id == "304" and record.title == "A Paper" and record.accepted is None
    assert record.decision is None
    assert [r.reviewer_id for r in record.reviews] == ["R1", "R2"]
    assert record.reviews[0].scores == {"RECOMMENDATION": 4, "REVIEWER_CONFIDENCE": 3.5, "SUBSTANCE": 8}
    assert record.reviews[1].scores == {"RECOMMENDATION": 7}
    assert not has_recognisable_sections(record.reviews[0])


def test_reviewer_ids_follow_file_order_around_meta_review() -> None:
    reviews = [
        {"comments": "First review text is here."},
        {"IS_META_REVIEW": True, "TITLE": "Decision", "comments": "DECISION:\nAccept (oral)\n\nCOMMENT:\nOK"},
        {"comments": "Second review text is here."},
    ]
    record = parse_review_record({"id": "x", "reviews": reviews}, source="x.json")
    assert [(r.reviewer_id, r.text) for r in record.reviews] == [
        ("R1", "First review text is here."),
        ("R2", "Second review text is here."),
    ]
    assert record.decision == "Accept (oral)"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "expected a JSON object"),
        ({"reviews": []}, "field 'id' is missing"),
        ({"id": "  ", "reviews": []}, "field 'id' must not be empty"),
        ({"id": None, "reviews": []}, "field 'id' must be a string, got null"),
        ({"id": "a"}, "field 'reviews' is missing"),
        ({"id": "a", "reviews": {"r": 1}}, "field 'reviews' must be a list, got dict"),
        ({"id": "a", "reviews": ["text"]}, "field 'reviews[0]' must be a JSON object, got str"),
        ({"id": "a", "reviews": [{}, {"comments": 5}]}, "'reviews[1].comments' must be a string, got int"),
        ({"id": "a", "reviews": [{"IS_META_REVIEW": "maybe"}]}, "'reviews[0].IS_META_REVIEW' must be true"),
    ],
)
def test_malformed_records(raw: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        parse_review_record(raw, source="bad/p.json")
    assert str(excinfo.value).startswith("bad/p.json: ")
    assert message in str(excinfo.value)


def test_lenient_optional_fields() -> None:
    raw = {
        "id": "a",
        "reviews": [],
        "accepted": "perhaps",
        "authors": "Ann Lee, Bo Chen",
        "keywords": None,
        "histories": [],
        "extra": {"anything": 1},
    }
    record = parse_review_record(raw, source="a.json")
    assert record.accepted is None and record.reviews == [] and record.keywords == []
