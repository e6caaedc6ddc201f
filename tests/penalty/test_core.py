"""The penalty's semantics on text: which tokens it lowers, for every tokenization, and nowhere else."""

from __future__ import annotations

import functools

import pytest

from reviewstack.common.aspects import EMPTY_ASPECT, AspectSchema
from reviewstack.common.review_format import render
from reviewstack.common.tokenizer import load_tokenizer
from reviewstack.penalty.core import REFUSAL, PenaltyTable, RowTracker
from reviewstack.penalty.surfaces import token_surfaces

ITEM = "- " + REFUSAL
# a vocabulary in which "- <No related terms>" can be written in many ways
VOCAB = [
    "1", ".", " Heading", "\n", "\n\n", "-", " ", "- ", "<", " <", "- <", "<No", "No", "N", "o",
    " related", " rel", "ated", " terms", " term", "s", ">", ">\n", "No related", "<No related terms>",
    " The", " paper", "x", "**", "#", ")",
]  # fmt: skip


def test_the_refusal_is_the_review_formats_empty_marker():
    assert REFUSAL == EMPTY_ASPECT


def tokenizations(text: str, vocab: list[str]) -> list[list[int]]:
    @functools.cache
    def ways(start: int) -> list[tuple[int, ...]]:
        if start == len(text):
            return [()]
        found = []
        for i, piece in enumerate(vocab):
            if piece and text.startswith(piece, start):
                found += [(i, *rest) for rest in ways(start + len(piece))]
        return found

    return [list(w) for w in ways(0)]


def fed(table: PenaltyTable, text_ids: list[int]) -> RowTracker:
    tracker = RowTracker(table)
    for token in text_ids:
        tracker.advance(token)
    return tracker


HEADING = [VOCAB.index(t) for t in ("1", ".", " Heading", "\n")]


def test_every_tokenization_of_the_refusal_is_penalised_past_the_bullet():
    table = PenaltyTable(VOCAB)
    ways = tokenizations(ITEM, VOCAB)
    assert len(ways) == 50  # the vocabulary above really offers many
    for way in ways:
        tracker = fed(table, HEADING)
        written = ""
        for token in way:
            written += VOCAB[token]
            reaches_refusal = len(written) > len("- ")
            assert (token in tracker.penalised()) is reaches_refusal, (way, written)
            tracker.advance(token)
        assert tracker.penalised() == ()  # the item is written: nothing left to lower


def test_blank_lines_and_other_bullets_before_the_refusal_still_count():
    table = PenaltyTable(VOCAB)
    for prefix in (["\n\n"], [], ["\n"]):
        tracker = fed(table, HEADING + [VOCAB.index(t) for t in prefix])
        assert VOCAB.index("<") in tracker.penalised()  # bare item
        assert VOCAB.index("- <") in tracker.penalised()
        assert VOCAB.index("-") not in tracker.penalised()  # every item starts with the bullet
    star = fed(table, [*HEADING, VOCAB.index("**")])  # "**" is not a bullet: not a refusal start
    assert star.penalised() == ()


@pytest.mark.parametrize(
    "heading", ["1. How to evaluate the idea", "**3. Prior work**", "### 2) Results", "  7. Other"]
)
def test_numbered_heading_lines_start_an_aspect_body(heading):
    table = PenaltyTable(VOCAB)
    tracker = RowTracker(table)
    tracker.feed(heading + "\n")
    assert VOCAB.index(" <") in tracker.penalised()


@pytest.mark.parametrize(
    "text",
    [
        "",  # nothing generated yet: the review has not started an aspect
        "Some preamble\n",  # not a heading
        "1. Heading\n- The paper is",  # an item that is not a refusal
        "1. Heading\n- The paper is clear.\n",  # a second item is never a refusal start
        "1. Heading\n- <No related work",  # diverged from the refusal
        "1. Heading\nx",  # body started with other text
        "- ",  # a bullet outside any aspect
        "2020. A year\n",  # a number is not a heading without "N." / "N)"
    ],
)
def test_nothing_is_penalised_where_no_refusal_can_start(text):
    table = PenaltyTable(VOCAB)
    tracker = RowTracker(table)
    tracker.feed(text)
    if text.endswith("- The paper is clear.\n"):
        tracker.feed("- ")
    assert tracker.penalised() == ()


def test_special_tokens_and_ids_outside_the_table_change_nothing():
    table = PenaltyTable(["", *VOCAB])  # id 0: a special token, surface ""
    tracker = RowTracker(table)
    tracker.feed("1. Heading\n")
    before = tracker.penalised()
    tracker.advance(0)
    tracker.advance(10_000)
    assert tracker.penalised() == before and before


def test_llama3_tokens_of_a_rendered_review_are_penalised_exactly_at_refusals():
    tokenizer = load_tokenizer().tokenizer
    table = PenaltyTable(token_surfaces(tokenizer))
    aspects = {"idea": ["The idea is new."], "experiments": ["Too few baselines."], "other": ["Typos."]}
    text = render(aspects, AspectSchema.SEVEN)  # four of seven aspects empty
    ids = tokenizer.encode(text, add_special_tokens=False)
    tracker = RowTracker(table)
    hits, written = [], ""
    for token in ids:
        if token in tracker.penalised():
            hits.append(table.surfaces[token])
        tracker.advance(token)
        written += table.surfaces[token]
    assert written == text
    # each empty aspect's item, from " <" on, and nothing of the other items or headings
    assert "".join(hits).replace(">\n\n", ">").split(">") == [" <No related terms"] * 4 + [""]
