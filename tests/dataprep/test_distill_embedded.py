"""The embedded distiller: section and topic rules, and merging what several reviewers said."""

from __future__ import annotations

import pytest

from reviewstack.common.aspects import AspectSchema
from reviewstack.dataprep.distill.embedded import EmbeddedDistiller, assign_aspect, content_terms
from reviewstack.dataprep.reviews import HumanPoint, PaperReviews


def _point(text: str, kind: str, reviewer: str = "R1", index: int = 0) -> HumanPoint:
    return HumanPoint(
        text=text, reviewer_id=reviewer, section="strengths_and_weaknesses", kind=kind, index=index
    )


@pytest.mark.parametrize(
    "text, kind, aspect",
    [
        ("The paper is clearly written and the method is sound.", "strength", "acceptance"),
        ("The theoretical analysis relies on strong assumptions.", "weakness", "rejection"),
        ("How does the method scale to larger graphs?", "question", "suggestions"),
        ("The authors do not discuss the societal impact.", "limitation", "suggestions"),
        (
            "Empirical results on three benchmarks show consistent gains over strong baselines.",
            "strength",
            "experiments",
        ),
        ("The experiments lack error bars and the ablation omits key baselines.", "weakness", "experiments"),
        (
            "The novelty is incremental: it closely follows prior work on adaptive penalties.",
            "weakness",
            "prior_work",
        ),
        ("The idea is well-motivated and offers a new insight into attention.", "strength", "idea"),
        ("There are several typos in Section 3.", "weakness", "other"),
        ("The paper proposes a new loss for preference optimisation.", "summary", None),
        ("The paper proposes an interesting and well-motivated loss.", "summary", "idea"),
        ("I thank the authors for the rebuttal.", "other", "other"),
    ],
)
def test_assign_aspect(text, kind, aspect):
    assert assign_aspect(_point(text, kind)) == aspect


def test_one_cue_of_a_topic_does_not_move_a_weakness():
    # mentions a table once: still a reason for rejection, not an "experiments" point
    assert (
        assign_aspect(_point("The claims in the introduction overreach what Table 2 supports.", "weakness"))
        == "rejection"
    )


def test_four_aspect_assignment():
    four = AspectSchema.FOUR
    assert (
        assign_aspect(_point("The novelty over prior work is limited.", "weakness"), four) == "significance"
    )
    assert assign_aspect(_point("Why this loss?", "question"), four) == "suggestions"
    assert assign_aspect(_point("Well written.", "strength"), four) == "acceptance"


def test_content_terms_ignore_stopwords_and_case():
    assert content_terms("The Experiments are LIMITED to small datasets") == {
        "experi",
        "limite",
        "small",
        "datase",
    }


def _paper(paper_id: str = "p") -> PaperReviews:
    return PaperReviews(paper_id=paper_id, title="t", abstract="", accepted=True, decision=None, reviews=[])


def test_near_duplicates_from_different_reviewers_merge_and_rank_first():
    points = [
        _point("The paper is well written and easy to follow.", "strength", "R1", 0),
        _point(
            "Experiments are limited to small synthetic datasets without real-world evaluation.",
            "weakness",
            "R1",
            1,
        ),
        _point("The theory section is rigorous.", "strength", "R2", 0),
        _point(
            "The experimental evaluation is limited to small synthetic datasets; real-world data is missing.",
            "weakness",
            "R2",
            1,
        ),
        _point(
            "Experiments only use small synthetic datasets, no real-world benchmarks.", "weakness", "R3", 0
        ),
        _point("The method requires tuning a sensitive temperature parameter.", "weakness", "R3", 1),
    ]
    result = EmbeddedDistiller().distill([_paper()], {"p": points})["p"]
    experiments = result.aspects["experiments"]
    # three reviewers' versions of one point become one item, ranked first
    assert len([i for i in experiments if "synthetic" in i]) == 1
    assert result.aspects["experiments"][0].startswith("Experiments are limited")
    assert result.aspects["rejection"] == ["The method requires tuning a sensitive temperature parameter."]
    assert result.aspects["acceptance"] == [
        "The paper is well written and easy to follow.",
        "The theory section is rigorous.",
    ]
    assert result.aspects["prior_work"] == [] and result.error is None


def test_a_strength_and_a_weakness_never_merge():
    points = [
        _point(
            "The experiments on ImageNet show a clear improvement in accuracy over baselines.",
            "strength",
            "R1",
        ),
        _point(
            "The experiments on ImageNet show no clear improvement in accuracy over baselines.",
            "weakness",
            "R2",
        ),
    ]
    result = EmbeddedDistiller().distill([_paper()], {"p": points})["p"]
    assert len(result.aspects["experiments"]) == 2


def test_points_on_one_topic_that_say_different_things_stay_apart():
    points = [
        _point("The experiments lack error bars over random seeds.", "weakness", "R1"),
        _point("The experiments omit the strongest recent baselines on these benchmarks.", "weakness", "R2"),
    ]
    result = EmbeddedDistiller().distill([_paper()], {"p": points})["p"]
    assert len(result.aspects["experiments"]) == 2


def test_long_points_are_cut_at_sentence_ends():
    long_text = " ".join(f"Sentence number {i} says something about the weak baselines." for i in range(20))
    result = EmbeddedDistiller(max_item_words=30).distill([_paper()], {"p": [_point(long_text, "weakness")]})
    item = next(i for items in result["p"].aspects.values() for i in items)
    assert len(item.split()) <= 30 and item.endswith(".")


def test_describe_names_the_model_and_thresholds():
    described = EmbeddedDistiller().describe()
    assert described["embedding_model"] == "all-MiniLM-L6-v2" and described["merge_threshold"] == 0.8
