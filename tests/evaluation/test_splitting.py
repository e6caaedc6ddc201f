"""Free text → points: list items when the text is a list, sentences otherwise."""

from __future__ import annotations

from reviewstack.evaluation.splitting import split_points


def test_list_items_are_points_and_headings_are_not() -> None:
    text = """## Review
**Strengths**
- Clear writing, e.g. in Sec. 2.
* Strong results
  on **ImageNet**.

Weaknesses:
1. Missing baselines. See Fig. 2 for the gap.
2) No ablation

Overall a fine paper. I lean accept."""
    assert split_points(text) == [
        "Clear writing, e.g. in Sec. 2.",
        "Strong results on ImageNet.",
        "Missing baselines. See Fig. 2 for the gap.",  # an item stays whole
        "No ablation",
        "Overall a fine paper.",
        "I lean accept.",
    ]


def test_prose_is_cut_into_sentences() -> None:
    text = "The method, by Smith et al., is new. It beats $x = 1.5$ baselines!\n\nMinor: a typo in Eq. 3."
    assert split_points(text) == [
        "The method, by Smith et al., is new.",
        "It beats $x = 1.5$ baselines!",
        "Minor: a typo in Eq. 3.",
    ]


def test_one_numbered_line_is_not_a_list() -> None:
    assert split_points("1. The idea is new. The results are weak.") == [
        "1. The idea is new.",
        "The results are weak.",
    ]


def test_nothing_to_say_gives_no_points() -> None:
    assert split_points("") == []
    assert split_points("  \n\n") == []
    assert split_points("<No related terms>") == []
    assert split_points("- <No related terms>\n- <No related terms>") == []
