"""The review record: what its writers put in is what its readers get back, and a wrong record is one line."""

from __future__ import annotations

import hashlib
import json

import pytest

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.review_format import parse, render
from reviewstack.common.review_record import InvalidRecord, ReviewBody, ReviewRecord

SEVEN = AspectSchema.SEVEN.aspects


def _text(aspects: int) -> str:
    return "\n".join(f"{i}. {a.criterion}\n- a point on {a.key}" for i, a in enumerate(SEVEN[:aspects], 1))


def test_a_written_record_reads_back_equal_with_the_papers_id_and_hash():
    parsed = parse(_text(7), AspectSchema.SEVEN, strict=False)
    record = ReviewRecord.of_paper(
        "papers/p17.md",
        b"paper text",
        "reviewer-v1",
        ReviewBody.from_parsed(parsed, "raw"),
        lineage={"model": "m", "parameters": {"max_new_tokens": 1150, "refusal_penalty": 0.0}},
        generated_tokens=700,
    )
    again = ReviewRecord.from_json(record.to_json())
    assert again == record
    assert (again.paper_id, again.source.file) == ("p17", "p17.md")
    assert again.source.sha256 == hashlib.sha256(b"paper text").hexdigest()
    assert again.review.text == render(parsed.aspects, AspectSchema.SEVEN)
    assert again.well_formed and not again.reached_budget and again.unwritten_aspects == []
    assert json.loads(record.to_json())["lineage"]["parameters"]["refusal_penalty"] == 0.0  # λ 0 written


def test_a_review_cut_at_its_budget_is_not_well_formed_and_names_what_it_never_reached():
    parsed = parse(_text(5), AspectSchema.SEVEN, strict=False)
    body = ReviewBody.from_parsed(parsed, "raw")
    lineage = {"parameters": {"max_new_tokens": 1150}}
    cut = ReviewRecord.of_paper("p.md", b"", "s", body, lineage=lineage, generated_tokens=1150)
    assert cut.reached_budget and not cut.well_formed
    assert cut.unwritten_aspects == [a.criterion for a in SEVEN[5:]]
    older = ReviewRecord.model_validate({"review": body.model_dump()})  # no token counts: not cut
    assert not older.reached_budget


def test_fields_other_writers_add_are_kept():
    raw = {"paper_id": "p", "review": {"text": "free"}, "judge": {"score": 3}}
    record = ReviewRecord.from_json(json.dumps(raw))
    assert json.loads(record.to_json())["judge"] == {"score": 3}
    assert not record.well_formed  # free text: no aspects


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{", "not JSON"),
        (b"[1]", "not a review record: a JSON object with a 'review' object"),
        (b'{"review": "text"}', "not a review record: a JSON object"),
        (b'{"review": {"aspects": [{"name": "x", "items": "one"}]}}', "review.aspects.0.items"),
        (b'{"review": {"aspects": [{"name": "x", "empty": "yes"}]}}', "review.aspects.0.empty"),
        (b'{"review": {}, "generated_tokens": "many"}', "generated_tokens"),
    ],
)
def test_a_wrong_record_is_refused_in_one_line(data, reason):
    with pytest.raises(InvalidRecord) as info:
        ReviewRecord.from_json(data)
    assert reason in str(info.value) and "\n" not in str(info.value)
