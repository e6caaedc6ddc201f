"""Which tokens continue a refusal, decided on text so that every tokenization is covered.

The model writes a review as numbered aspect headings ("3. How to evaluate the experimental results in the
paper"), each followed on the next lines by "- " items; an empty aspect is the single item
"- <No related terms>". An aspect *body* starts after its heading's newline. While the text of the body
so far (leading whitespace skipped) is still a prefix of a refusal item, a token is penalised if
appending its text keeps the body a prefix of the item (or completes it) and reaches into
"<No related terms>" itself. The bullet alone ("-", " ") is never penalised: every item starts with it.

Working on token *surfaces* (the text each token adds) rather than on token ids makes every
tokenization of the item count: "<No" + " related", "<" + "No" + " related", " <" after "-", and so on.
For each reachable body prefix the set of continuing tokens is computed once, from an index of all
surfaces, and memoised: a row in the middle of a refusal costs one dictionary lookup a step.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

#: The item an empty aspect holds (reviewstack.common.aspects.EMPTY_ASPECT; a test keeps them equal).
REFUSAL = "<No related terms>"
#: Bullets the item may follow: the format's "- ", the ones models drift to, and none.
BULLETS = ("- ", "* ", "• ", "")

# a numbered heading line, tolerating markdown decoration: "3. How…", "**3. How…**", "### 3) How…"
_HEADING = re.compile(r"^\s*(?:#{1,6}\s*)?(?:\*\*)?\s*\d{1,2}\s*[.)]\s*\S")
_LINE_KEPT = 64  # characters of the current line kept: enough to recognise a heading


class PenaltyTable:
    """The refusal items and an index of one tokenizer's token surfaces.

    `surfaces[i]` is the text token i adds in the middle of a text ("" for special tokens, which are
    never penalised); see `reviewstack.penalty.surfaces.token_surfaces`.
    """

    def __init__(self, surfaces: Sequence[str], refusal: str = REFUSAL, bullets: Sequence[str] = BULLETS):
        if not refusal.strip():
            raise ValueError("the refusal text is empty")
        self.surfaces = list(surfaces)
        self.refusal = refusal
        # each item and how many of its characters come before the refusal proper (the bullet)
        self.items = tuple((bullet + refusal, len(bullet)) for bullet in bullets)
        self._exact: dict[str, list[int]] = {}  # surface → ids
        self._exact_stripped: dict[str, list[int]] = {}  # surface without leading whitespace → ids
        for token_id, surface in enumerate(self.surfaces):
            if surface:
                self._exact.setdefault(surface, []).append(token_id)
            stripped = surface.lstrip()
            if stripped:
                self._exact_stripped.setdefault(stripped, []).append(token_id)
        self._sorted = sorted(self._exact)
        self._sorted_stripped = sorted(self._exact_stripped)
        self._memo: dict[str, tuple[int, ...]] = {}
        self.after_heading = self._after_heading()

    # -- the body of an aspect ---------------------------------------------------------------------
    def compatible(self, body: str) -> bool:
        """The body could still become (or already is, or goes past) a refusal item."""
        return any(item.startswith(body) or body.startswith(item) for item, _ in self.items)

    def complete(self, body: str) -> bool:
        return any(body.startswith(item) for item, _ in self.items)

    def continuing(self, body: str) -> tuple[int, ...]:
        """Ids of the tokens that would continue the body `body` (leading whitespace already skipped)
        into the refusal; memoised, since only prefixes of the items can be asked for."""
        found = self._memo.get(body)
        if found is None:
            found = self._memo[body] = tuple(sorted(self._continuing(body)))
        return found

    def _continuing(self, body: str) -> set[int]:
        at_start = body == ""  # whitespace before the item is skipped, so " <" counts as "<"
        exact = self._exact_stripped if at_start else self._exact
        ordered = self._sorted_stripped if at_start else self._sorted
        ids: set[int] = set()
        for item, bullet_chars in self.items:
            if not item.startswith(body) or body == item:
                continue
            rest = item[len(body) :]
            # a token that is a prefix of the rest and reaches past the bullet into the refusal
            for n in range(max(1, bullet_chars - len(body) + 1), len(rest) + 1):
                ids.update(exact.get(rest[:n], ()))
            # a token that completes the item and goes on (">\n", ">.")
            start = bisect.bisect_left(ordered, rest)
            while start < len(ordered) and ordered[start].startswith(rest):
                ids.update(exact[ordered[start]])
                start += 1
        return ids

    def _after_heading(self) -> tuple[int, ...]:
        """Tokens that end a heading line and start a refusal in one piece ("\\n- <", "\\n<No")."""
        ids = []
        for token_id, surface in enumerate(self.surfaces):
            if "\n" not in surface:
                continue
            body = surface.split("\n", 1)[1].lstrip()
            if body and any(
                (item.startswith(body) and len(body) > bullet_chars) or body.startswith(item)
                for item, bullet_chars in self.items
            ):
                ids.append(token_id)
        return tuple(ids)

    @staticmethod
    def is_heading(line: str) -> bool:
        return _HEADING.match(line) is not None


class RowTracker:
    """The penalty's view of one sequence being generated: fed every accepted token, it says which
    tokens to penalise next. Costs a few string operations per token."""

    __slots__ = ("armed", "body", "line", "table")

    def __init__(self, table: PenaltyTable) -> None:
        self.table = table
        self.line = ""  # the start of the current line
        self.armed = False  # inside an aspect body that could still be a refusal
        self.body = ""  # that body's text, leading whitespace skipped

    def penalised(self) -> tuple[int, ...]:
        """Token ids whose logit to lower before choosing the next token."""
        if self.armed:
            return self.table.continuing(self.body)
        if self.table.is_heading(self.line):
            return self.table.after_heading
        return ()

    def advance(self, token_id: int) -> None:
        surfaces = self.table.surfaces
        if 0 <= token_id < len(surfaces):
            self.feed(surfaces[token_id])

    def feed(self, text: str) -> None:
        table = self.table
        for char in text:
            if self.armed and not (self.body == "" and char.isspace()):
                self.body += char
                if not table.compatible(self.body) or table.complete(self.body):
                    self.armed = False  # other text, or the refusal is written: nothing left to do
            if char == "\n":
                if table.is_heading(self.line):
                    self.armed, self.body = True, ""
                self.line = ""
            elif len(self.line) < _LINE_KEPT:
                self.line += char
