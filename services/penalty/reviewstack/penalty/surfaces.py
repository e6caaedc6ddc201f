"""The text each token of a Hugging Face tokenizer adds in the middle of a sequence."""

from __future__ import annotations

from typing import Any


def token_surfaces(tokenizer: Any) -> list[str]:
    """`surfaces[i]` = the text token i appends after ordinary text; "" for special tokens.

    Each token is decoded after an ordinary anchor token and the anchor's text removed: decoding a lone
    token loses what depends on position (SentencePiece drops a leading "▁" space at the start of a
    text). About one second for a 128k vocabulary with a fast tokenizer.
    """
    anchor = tokenizer.encode("a", add_special_tokens=False)[-1:]
    prefix = tokenizer.decode(anchor, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    size = len(tokenizer)
    decoded = tokenizer.batch_decode(
        [[*anchor, token_id] for token_id in range(size)],
        skip_special_tokens=False,
        clean_up_tokenization_spaces=False,
    )
    special = set(tokenizer.all_special_ids)
    return [
        "" if token_id in special or not text.startswith(prefix) else text[len(prefix) :]
        for token_id, text in enumerate(decoded)
    ]
