"""Fit a distilled target into `max_response_length` tokens without losing its structure.

Cutting the rendered text at the limit would drop the last aspects entirely (and with them the end of
the format the model must learn). Instead the lowest-ranked items of the longest aspects are dropped
first — items are ranked by how many reviewers raised them — and every aspect keeps at least one item.
"""

from __future__ import annotations

from dataclasses import dataclass

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.errors import InvalidArgument
from reviewstack.common.review_format import render
from reviewstack.common.tokenizer import LoadedTokenizer


@dataclass(frozen=True)
class FittedResponse:
    aspects: dict[str, list[str]]
    text: str
    tokens: int
    items_dropped: int
    items_shortened: int = 0

    @property
    def truncated(self) -> bool:
        return bool(self.items_dropped or self.items_shortened)


def minimum_response_length(schema: AspectSchema, tokenizer: LoadedTokenizer) -> int:
    """Tokens the bare structure needs (every aspect holding only the empty marker), plus room for a
    few words: a smaller budget could not hold any review."""
    return tokenizer.count(render({}, schema)) + 32


def fit_response(
    aspects: dict[str, list[str]], schema: AspectSchema, tokenizer: LoadedTokenizer, limit: int
) -> FittedResponse:
    kept = {key: list(aspects.get(key, [])) for key in schema.keys}
    text = render(kept, schema)
    tokens = tokenizer.count(text)
    dropped = 0
    if tokens <= limit:
        return FittedResponse(kept, text, tokens, 0)
    # estimate with per-item counts (one tokenizer call per item), then confirm on the rendered text
    cost = {key: [tokenizer.count(f"- {item}\n") for item in items] for key, items in kept.items()}
    estimate = tokens
    while True:
        while estimate > limit:
            key = max((k for k in kept if len(kept[k]) > 1), key=lambda k: sum(cost[k]), default=None)
            if key is None:
                break
            kept[key].pop()
            estimate -= cost[key].pop()
            dropped += 1
        text = render(kept, schema)
        tokens = tokenizer.count(text)
        if tokens <= limit or all(len(items) <= 1 for items in kept.values()):
            break
        estimate = tokens
    shortened = 0
    while tokens > limit:  # one item per aspect and still too long: shorten the longest item
        key = max(kept, key=lambda k: len(kept[k][0].split()) if kept[k] else 0)
        words = kept[key][0].removesuffix(" …").split() if kept[key] else []
        if len(words) <= 1:
            raise InvalidArgument(
                f"max_response_length {limit} cannot hold the {len(schema.keys)}-aspect structure even with "
                f"one-word items ({tokens} tokens); raise it"
            )
        kept[key][0] = " ".join(words[: max(1, int(len(words) * 0.8))]) + " …"
        shortened += 1
        text = render(kept, schema)
        tokens = tokenizer.count(text)
    return FittedResponse(kept, text, tokens, dropped, shortened)
