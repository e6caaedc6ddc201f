"""Split assignment by paper, and fitting targets into the response budget without losing structure."""

from __future__ import annotations

from collections import Counter

import pytest

from reviewstack.common.aspects import EMPTY_ASPECT, AspectSchema
from reviewstack.common.response_fit import fit_response
from reviewstack.common.review_format import parse
from reviewstack.common.tokenizer import load_tokenizer
from reviewstack.dataprep.splits import assign_splits


def test_splits_are_exact_seeded_and_independent_of_order():
    ids = [f"paper{i}" for i in range(100)]
    splits = assign_splits(ids, (0.8, 0.1, 0.1), seed=0)
    assert Counter(splits.values()) == {"train": 80, "val": 10, "test": 10}
    assert assign_splits(list(reversed(ids)), (0.8, 0.1, 0.1), seed=0) == splits
    assert assign_splits(ids, (0.8, 0.1, 0.1), seed=1) != splits


def test_small_datasets_still_get_val_and_test():
    assert Counter(assign_splits(["a", "b", "c"], (0.8, 0.1, 0.1), 0).values()) == {
        "train": 1,
        "val": 1,
        "test": 1,
    }
    assert Counter(assign_splits(["a", "b", "c", "d"], (1.0, 0.0, 0.0), 0).values()) == {"train": 4}


@pytest.fixture(scope="module")
def llama3():
    return load_tokenizer()


def test_a_target_within_the_limit_is_untouched(llama3):
    aspects = {"idea": ["Neat."], "rejection": ["Small experiments."]}
    fitted = fit_response(aspects, AspectSchema.SEVEN, llama3, 1150)
    assert not fitted.truncated and fitted.items_dropped == 0
    assert fitted.tokens == llama3.count(fitted.text)


def test_an_overlong_target_drops_the_lowest_ranked_items_and_keeps_every_aspect(llama3):
    aspects = {k: [f"{k} point {i}: " + "words " * 25 for i in range(12)] for k in AspectSchema.SEVEN.keys}
    fitted = fit_response(aspects, AspectSchema.SEVEN, llama3, 600)
    assert fitted.tokens <= 600 and fitted.tokens == llama3.count(fitted.text)
    assert fitted.items_dropped > 0 and fitted.truncated
    parsed = parse(fitted.text)
    for key, items in parsed.aspects.items():
        assert items and EMPTY_ASPECT not in items
        assert items == [i.strip() for i in aspects[key][: len(items)]]  # the top-ranked items survive


def test_one_huge_item_per_aspect_is_shortened(llama3):
    aspects = {k: ["word " * 400] for k in AspectSchema.SEVEN.keys}
    fitted = fit_response(aspects, AspectSchema.SEVEN, llama3, 300)
    assert fitted.tokens <= 300 and fitted.items_shortened > 0
    assert set(parse(fitted.text).aspects) == set(AspectSchema.SEVEN.keys)


def test_a_budget_too_small_for_the_structure_is_refused(llama3):
    from reviewstack.common.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="cannot hold the 7-aspect structure"):
        fit_response(
            {k: ["some words here"] for k in AspectSchema.SEVEN.keys}, AspectSchema.SEVEN, llama3, 100
        )
