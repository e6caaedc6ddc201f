"""Train/val/test assignment by paper, never by review: no paper's reviews leak across splits."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

SPLITS = ("train", "val", "test")


def assign_splits(paper_ids: Iterable[str], shares: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Rank papers by a seeded hash of their id, then cut the ranking at the shares.

    Hash ranking (rather than shuffling a list) makes a paper's split depend only on its id, the seed
    and the dataset size, not on the order files were listed in. Val and test get at least one paper
    each when their share is positive and there are enough papers.
    """
    ranked = sorted(set(paper_ids), key=lambda pid: hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest())
    n = len(ranked)
    n_val, n_test = (round(n * share) for share in shares[1:])
    if n >= 3:
        n_val = max(n_val, 1) if shares[1] > 0 else 0
        n_test = max(n_test, 1) if shares[2] > 0 else 0
    n_train = n - n_val - n_test
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return dict(zip(ranked, names, strict=True))
