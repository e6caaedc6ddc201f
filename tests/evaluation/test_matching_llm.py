"""The LLM-judge matcher: its reading of hand-written judge answers, and one run against the engine's
`/v1/chat/completions` with a tiny model, whose answers are noise: the run must still end well-formed."""

from __future__ import annotations

import pytest

from reviewstack.common.errors import NotFound
from reviewstack.evaluation.matching_llm import (
    JUDGE_PROMPT_VERSION,
    LLMMatcher,
    judge_messages,
    parse_judgement,
)
from reviewstack.evaluation.model import Match, Matcher

VALID = (
    '{"matches": [{"G": 1, "H": 2, "similarity": 8, "rationale": "same"}, {"G": 2, "H": 1, "similarity": 6}]}'
)


def test_a_valid_answer_gives_the_pairs_at_or_above_7():
    judgement = parse_judgement(VALID, 2, 2)
    assert judgement.matches == [Match(generated=0, reference=1, score=8.0)]
    assert (judgement.pairs, judgement.dropped, judgement.problem) == (2, 0, None)


@pytest.mark.parametrize(
    "answer",
    [
        f"Here are the matches:\n```json\n{VALID}\n```\nLet me know if you need more.",
        f"```\n{VALID}\n```",
        f"Sure. {VALID} These are all the pairs I found {{not json",
        f"```json\n{VALID}",  # an unclosed fence
    ],
)
def test_fences_and_text_around_the_json_are_skipped(answer):
    judgement = parse_judgement(answer, 2, 2)
    assert judgement.matches == [Match(0, 1, 8.0)] and judgement.problem is None


def test_an_answer_without_json_is_unreadable_not_empty():
    judgement = parse_judgement("I could not find any overlapping comments.", 3, 3)
    assert judgement.matches == [] and not judgement.readable and judgement.problem
    assert parse_judgement('{"matches": []}', 3, 3).readable  # an answer of no pairs is an answer


def test_a_truncated_answer_gives_up_its_whole_entries():
    answer = '{"matches": [{"G": 1, "H": 1, "similarity": 9}, {"G": 2, "H": 3, "similarity": 8}, {"G": 3, "H'
    judgement = parse_judgement(answer, 3, 3)
    assert judgement.matches == [Match(0, 0, 9.0), Match(1, 2, 8.0)]
    assert judgement.readable and "2 entries salvaged" in judgement.problem


def test_entries_out_of_range_or_without_a_usable_similarity_are_dropped_and_counted():
    entries = [
        '{"G": 0, "H": 1, "similarity": 9}',  # indices start at 1
        '{"G": 4, "H": 1, "similarity": 9}',  # only 3 generated points
        '{"G": 1, "H": "H9", "similarity": 9}',
        '{"G": 1, "H": 1, "similarity": 11}',
        '{"G": 1, "H": 1, "similarity": "high"}',
        '{"G": 1, "similarity": 9}',
        '"G2-H2"',
        '{"G": "G2", "H": "2", "similarity": "8/10"}',  # kept: indices and score as strings
        '{"generated": 3.0, "human": 1, "score": 7}',  # kept: other key names, a whole float
    ]
    judgement = parse_judgement('{"matches": [' + ", ".join(entries) + "]}", 3, 2)
    assert judgement.matches == [Match(1, 1, 8.0), Match(2, 0, 7.0)]
    assert (judgement.pairs, judgement.dropped) == (2, 7)


def test_duplicates_keep_the_higher_similarity_and_matches_are_one_to_one():
    pairs = [(1, 1, 8), (1, 1, 9), (1, 2, 10), (2, 2, 7), (3, 1, 8), (3, 3, 6)]
    answer = {"matches": [{"G": g, "H": h, "similarity": s} for g, h, s in pairs]}
    judgement = parse_judgement(str(answer).replace("'", '"'), 3, 3)
    # G1-H2 (10) first; G1-H1 (9) loses G1; G3-H1 (8) kept; G2-H2 (7) loses H2; G3-H3 (6) is below 7
    assert judgement.matches == [Match(0, 1, 10.0), Match(2, 0, 8.0)]
    assert (judgement.duplicates, judgement.conflicts) == (1, 2)


def test_pairs_keyed_by_name_as_in_liang_et_al():
    answer = '{"G1-H2": {"rationale": "same concern", "similarity": 7}, "G2-H1": {"similarity": 5}}'
    assert parse_judgement(answer, 2, 2).matches == [Match(0, 1, 7.0)]


def test_a_threshold_other_than_7_is_in_the_version():
    default = LLMMatcher("http://127.0.0.1:9/v1", "judge")
    stricter = LLMMatcher("http://127.0.0.1:9/v1", "judge", threshold=8)
    assert (default.name, default.version) == ("llm", JUDGE_PROMPT_VERSION)
    assert stricter.version == f"{JUDGE_PROMPT_VERSION}+t8"
    assert parse_judgement(VALID, 2, 2, threshold=8.5).matches == []


def test_the_prompt_numbers_both_lists_from_1():
    system, user = judge_messages(["Weak\n  baselines.", "Novel idea."], ["Baselines are weak."])
    assert system["role"] == "system" and "similarity" in system["content"]
    assert "G1. Weak baselines.\nG2. Novel idea." in user["content"]
    assert "H1. Baselines are weak." in user["content"]


@pytest.fixture(scope="module")
def engine(refuser_engine):
    """The session's shared engine (tests/conftest.py): the judge prompts here are under 300 tokens."""
    return refuser_engine


def test_a_run_against_the_engine_ends_well_formed(engine):
    matcher = LLMMatcher(f"{engine}/v1", "reviewstack", max_tokens=48, concurrency=2, retries=1)
    protocol: Matcher = matcher  # what the evaluation holds it as
    pairs = [
        (["The baselines are weak.", "The idea is novel.", "Figure 2 is unreadable."], ["Weak baselines."]),
        ([], ["Nothing generated to compare."]),
        (["Proofs are missing."], ["The theory lacks proofs.", "Typos throughout."]),
    ]
    result = protocol.match_many(pairs)
    assert len(result) == len(pairs)
    for (generated, reference), matches in zip(pairs, result, strict=True):
        assert all(0 <= m.generated < len(generated) and 0 <= m.reference < len(reference) for m in matches)
        assert all(m.score >= 7 for m in matches)
        assert len({m.generated for m in matches}) == len({m.reference for m in matches}) == len(matches)
    assert result[1] == [] and 1 not in matcher.failures  # no call for a paper without generated points
    for index, judgement in enumerate(matcher.judgements):
        assert (judgement is not None and judgement.readable) or index in matcher.failures
    assert set(matcher.failures) <= {0, 2} and all(matcher.failures.values())


def test_a_wrong_base_url_stops_the_run_with_what_to_fix(engine):
    with pytest.raises(NotFound, match="usually ends in /v1"):
        LLMMatcher(f"{engine}/nowhere", "reviewstack", retries=0).match_many([(["a"], ["b"])])
