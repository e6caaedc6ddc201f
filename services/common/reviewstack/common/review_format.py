"""The text format of a structured review: what the model is trained to write and what parsers read.

    1. How to evaluate the idea of the paper
    - first point
    - second point

    2. Compared to previous similar works, ...
    - <No related terms>

One numbered criterion line per aspect, in schema order, then its items as "- " lines. `render` and
`parse` round-trip exactly; `parse(strict=False)` also accepts the drift models show (markdown emphasis
or headings around the criterion line, other bullet characters, missing or repeated aspects) and reports
what it had to forgive.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from reviewstack.common.aspects import EMPTY_ASPECT, AspectSchema
from reviewstack.common.errors import InvalidArgument

_BULLET = re.compile(r"^\s*(?:[-*•+]|\d+[.)])\s+")
_HEADING = re.compile(r"^\s*(?:#{1,6}\s*)?(?:\*\*)?\s*(\d+)\s*[.)]\s*(.+?)\s*(?:\*\*)?\s*:?\s*(?:\*\*)?\s*$")


def render(aspects: Mapping[str, Sequence[str]], schema: AspectSchema = AspectSchema.SEVEN) -> str:
    """Render items per aspect key; an aspect without items is written as the empty marker."""
    unknown = set(aspects) - set(schema.keys)
    if unknown:
        raise InvalidArgument(f"unknown aspect keys {sorted(unknown)} for the {schema}-aspect schema")
    blocks = []
    for number, aspect in enumerate(schema.aspects, start=1):
        items = [" ".join(item.split()) for item in aspects.get(aspect.key, ()) if item.strip()]
        lines = [f"{number}. {aspect.criterion}", *(f"- {item}" for item in items or [EMPTY_ASPECT])]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def run_on_marker(schema: AspectSchema = AspectSchema.SEVEN) -> str:
    """What a model writes when it runs on past the last aspect: a blank line and the next number.
    Weak or briefly tuned models do (an 8th, 9th … aspect) instead of ending their turn; as a stop
    sequence it ends the review where the format does, and saves the tokens."""
    return f"\n\n{len(schema.aspects) + 1}."


def is_empty(items: Sequence[str]) -> bool:
    """An aspect is empty when it holds nothing but the empty marker."""
    return all(item.strip() == EMPTY_ASPECT for item in items)


@dataclass
class ParsedReview:
    aspects: dict[str, list[str]]
    schema: AspectSchema
    warnings: list[str] = field(default_factory=list)
    # aspects the text never reached (a review cut at its token budget), held as the empty marker so the
    # review still renders; kept apart because a refusal is a decision and a cut is not
    missing: list[str] = field(default_factory=list)

    @property
    def empty_aspects(self) -> list[str]:
        """Aspects with no points, whether the model declined them or never wrote them."""
        return [key for key, items in self.aspects.items() if is_empty(items)]

    @property
    def refused_aspects(self) -> list[str]:
        """Aspects the model wrote and declined: the ones the refusal penalty is about."""
        return [key for key in self.empty_aspects if key not in self.missing]


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _match_heading(line: str, schema: AspectSchema, strict: bool) -> str | None:
    m = _HEADING.match(line)
    if not m:
        return None
    number, title = int(m.group(1)), _normalise(m.group(2))
    for i, aspect in enumerate(schema.aspects, start=1):
        criterion = _normalise(aspect.criterion)
        if title == criterion and (number == i or not strict):
            return aspect.key
        if not strict and number == i and (criterion.startswith(title) or title.startswith(criterion)):
            return aspect.key
    return None


def parse(text: str, schema: AspectSchema = AspectSchema.SEVEN, *, strict: bool = True) -> ParsedReview:
    """Parse a rendered review. Strict mode accepts only what `render` writes."""
    aspects: dict[str, list[str]] = {}
    warnings: list[str] = []
    current: str | None = None
    preamble = 0  # lines before the first heading: one warning for all of them
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip():
            continue
        key = _match_heading(line, schema, strict)
        if key is not None:
            if key in aspects:
                if strict:
                    raise InvalidArgument(f"aspect {key!r} appears twice")
                warnings.append(f"aspect {key!r} repeated; items merged")
            aspects.setdefault(key, [])
            current = key
            continue
        if current is None:
            if strict:
                raise InvalidArgument(f"text before the first aspect heading: {line[:80]!r}")
            preamble += 1
            continue
        if line.startswith("- "):
            aspects[current].append(line[2:].strip())
        elif strict:
            raise InvalidArgument(f"line in aspect {current!r} is not a '- ' item: {line[:80]!r}")
        elif _BULLET.match(line):
            aspects[current].append(_BULLET.sub("", line).strip())
        elif aspects[current]:
            aspects[current][-1] += " " + line.strip()  # a wrapped item continues
        else:
            aspects[current].append(line.strip())
    if preamble:  # first: the preamble came before anything else warned about
        lines = f"{preamble} line" + ("s" if preamble > 1 else "")
        warnings.insert(0, f"text before the first aspect heading ignored ({lines})")
    missing = [k for k in schema.keys if k not in aspects]
    if missing:
        if strict:
            raise InvalidArgument(f"aspects missing from the review: {missing}")
        warnings.append(f"aspects never written (no points, not counted as declined): {missing}")
    ordered = {k: [i for i in aspects.get(k, []) if i] or [EMPTY_ASPECT] for k in schema.keys}
    for key, items in ordered.items():
        if len(items) > 1 and EMPTY_ASPECT in items:
            if strict:
                raise InvalidArgument(f"aspect {key!r} mixes the empty marker with items")
            ordered[key] = [i for i in items if i != EMPTY_ASPECT]
            warnings.append(f"aspect {key!r} mixed the empty marker with items; marker dropped")
    return ParsedReview(aspects=ordered, schema=schema, warnings=warnings, missing=missing)
