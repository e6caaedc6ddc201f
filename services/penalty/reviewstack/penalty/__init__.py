"""The refusal penalty: one engine-agnostic core and thin adapters for the engines that serve reviews.

A review is written as numbered aspect headings, each followed by "- " items; an aspect with nothing to
say holds the single item `<No related terms>`. While the text generated since the start of an aspect's
body could still become that item, the tokens that would continue it get their logit lowered by λ. λ = 0
changes nothing.

- `core`: which tokens to penalise, from token surface strings and the text generated so far (pure Python);
- `surfaces`: the surface string of every token of a Hugging Face tokenizer;
- `hf`: a transformers `LogitsProcessor` (the embedded engine and plain `generate`);
- `tgi`, `vllm`: adapters for those servers (see their docstrings for what is verified where).
"""

from reviewstack.penalty.core import REFUSAL, PenaltyTable, RowTracker

__all__ = ["REFUSAL", "PenaltyTable", "RowTracker"]
