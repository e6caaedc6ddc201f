"""The page's pieces without a server: aspects found in a stream cut anywhere, the upload checks, the
Markdown of a review record."""

from __future__ import annotations

import pytest

from reviewstack.common.aspects import EMPTY_ASPECT, AspectSchema
from reviewstack.common.review_format import render
from reviewstack.common.review_record import AspectEntry, ReviewBody, ReviewRecord
from reviewstack.web.reviews import AspectTracker, UploadRejected, check_upload, decoding
from reviewstack.web.settings import WebSettings

REVIEW = {"idea": ["Novel.", "Simple."], "experiments": ["Two benchmarks only."], "other": ["Typos."]}


@pytest.mark.parametrize("step", [1, 3, 17, 10_000])
def test_each_aspect_is_sent_once_in_order_when_the_next_begins(step: int) -> None:
    text = render(REVIEW)
    tracker, sent = AspectTracker(), []
    for start in range(0, len(text), step):
        sent += tracker.feed(text[start : start + step])
    keys = AspectSchema.SEVEN.keys
    assert [e["index"] for e in sent] == list(range(6))  # the last one ends only with the review
    for event in sent:
        key = keys[event["index"]]
        assert event["items"] == REVIEW.get(key, []) and event["empty"] == (key not in REVIEW)
        assert event["name"] == AspectSchema.SEVEN.aspects[event["index"]].criterion


def test_a_half_written_item_is_not_sent_as_finished() -> None:
    tracker = AspectTracker()
    assert tracker.feed("1. How to evaluate the idea of the paper\n- Nov") == []
    sent = tracker.feed("el.\n\n2. Compared to previous")  # the heading's line is not finished yet
    assert sent == []
    sent = tracker.feed(" similar works, what are the essential differences\n")
    assert [e["items"] for e in sent] == [["Novel."]]


@pytest.mark.parametrize(
    "name, content, status",
    [
        ("", b"# paper", 400),
        ("paper.md", b"  \n", 400),
        ("paper.html", b"<html>", 415),
        ("paper.pdf", b"# not a pdf", 415),
        ("paper.txt", b"\xff\xfe", 415),
        ("paper.md", b"x" * 1025, 413),
    ],
)
def test_uploads_are_refused_by_name_content_and_size(name: str, content: bytes, status: int) -> None:
    with pytest.raises(UploadRejected) as refused:
        check_upload(name, content, max_bytes=1024)
    assert refused.value.status == status


def test_an_upload_keeps_only_its_base_name() -> None:
    assert check_upload("..\\..\\evil/dir/paper.MD", b"# ok", 1024).filename == "paper.MD"
    assert check_upload("scan.pdf", b"%PDF-1.7 ...", 1024).filename == "scan.pdf"


def test_the_markdown_of_a_record_says_declined_and_unwritten_aspects_in_words() -> None:
    aspects = [
        AspectEntry(
            name="How to evaluate the idea of the paper", items=["Novel."], empty=False, missing=False
        ),
        AspectEntry(name="Potential reasons for acceptance", items=[EMPTY_ASPECT], empty=True, missing=False),
        AspectEntry(name="Other important review comments", items=[EMPTY_ASPECT], empty=True, missing=True),
    ]
    record = ReviewRecord.of_paper(
        "p1.md",
        b"# p",
        "reviewer",
        ReviewBody(aspects=aspects),
        lineage={"parameters": {"refusal_penalty": 1.5}},
    )
    markdown = record.to_markdown()
    assert markdown.startswith("# Review of p1\n")
    assert "## How to evaluate the idea of the paper\n\n- Novel." in markdown
    assert "Declined" in markdown.split("## Potential reasons for acceptance")[1].split("##")[0]
    assert "Not written" in markdown.split("## Other important review comments")[1]
    assert "- **parameters.refusal_penalty**: 1.5" in markdown and "- **system**: reviewer" in markdown


def test_a_system_is_a_target_or_a_target_with_the_decoding_sent_with_every_request() -> None:
    settings = WebSettings(
        _cli_parse_args=[],
        review_services={
            "plain": "review:50051",
            "reviewer": {
                "target": "reviewer:50051",
                "temperature": 0.7,
                "top_p": 0.9,
                "repetition_penalty": 1.1,
            },
        },
    )
    plain, reviewer = settings.review_services["plain"], settings.review_services["reviewer"]
    assert plain.target == "review:50051" and plain.temperature == 0 and plain.repetition_penalty is None
    sent = decoding(reviewer, 2.0)
    assert (sent.temperature, sent.top_p, sent.repetition_penalty, sent.refusal_penalty) == (
        0.7,
        0.9,
        1.1,
        2.0,
    )
    assert not sent.HasField("seed") and not decoding(plain, 0).HasField("repetition_penalty")


@pytest.mark.parametrize(
    "systems",
    [
        {"x": "http://review:50051"},
        {"x": "review"},
        {"x": {"target": "review:50051", "temperature": -1}},
        {"x": {"target": "review:50051", "url": "http://elsewhere"}},
        {"": "review:50051"},
    ],
)
def test_a_bad_system_stops_the_page_at_start(systems: dict) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        WebSettings(_cli_parse_args=[], review_services=systems)
