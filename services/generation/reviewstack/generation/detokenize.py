"""Text for each generated token as it comes, without breaking multi-byte characters or word spacing."""

from __future__ import annotations

from typing import Any

_CONTEXT = 5  # prompt tokens decoded in front of the first generated ones (SentencePiece spacing)


class IncrementalDetokenizer:
    """Decodes a growing id list window by window: a token's text is what decoding it together with the
    few tokens before it adds, held back while it ends in an incomplete UTF-8 sequence ("�")."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-_CONTEXT:])
        self.prefix = 0
        self.read = len(self.ids)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
