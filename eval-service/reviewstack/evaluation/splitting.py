"""Free text → points, for reviews that come without structure (an unparsed generation, a plain-text
baseline).

A writer who used a list meant each item as one point, so bullets and numbered items are kept whole;
prose is cut into sentences with the splitter data-prep uses for the human reviews, so that a generated
sentence and a human sentence are units of the same size when they are matched.
"""

from __future__ import annotations

import re

from reviewstack.common.aspects import EMPTY_ASPECT
from reviewstack.common.sentences import split_sentences

__all__ = ["split_points"]

# "- x", "* x", "• x", "+ x", "1. x", "1) x", "(1) x", "a) x" ("3.5 x" is no bullet: a space must follow).
_BULLET_RE = re.compile(r"^\s*(?:[-*•·+▪◦–]|\d{1,2}[.)]|\(\d{1,2}\)|[a-h]\))\s+(?P<rest>\S.*)$")
_HEADING_RE = re.compile(r"^\s*#{1,6}\s")  # a Markdown heading
_BOLD_LINE_RE = re.compile(r"^\s*\*\*[^*]+\*\*\s*[:：]?\s*$")  # "**Weaknesses**" alone on its line
_EMPHASIS_RE = re.compile(r"\*\*(.+?)\*\*|__(.+?)__")
_LEAD_IN_MAX_WORDS = 12
# Two items make a list; a single line that happens to start with "1." is more often wrapped prose.
_MIN_LIST_ITEMS = 2


def split_points(text: str) -> list[str]:
    """The points of a free-text review, in order: its list items when it has a list, else sentences."""
    lines = text.splitlines()
    if sum(1 for line in lines if _BULLET_RE.match(line)) >= _MIN_LIST_ITEMS:
        points = _list_points(lines)
    else:
        points = [s for paragraph in _paragraphs(lines) for s in split_sentences(paragraph)]
    cleaned = (_clean(p) for p in points)
    return [p for p in cleaned if p and p != EMPTY_ASPECT]


def _list_points(lines: list[str]) -> list[str]:
    """Items of a list; a line under an item continues it, prose between lists is cut into sentences,
    and headings and lead-ins ("Weaknesses:") introduce points without being points."""
    points: list[str] = []
    item: list[str] | None = None  # the list item being assembled; points[-1] is its text
    prose: list[str] = []  # a paragraph outside the list

    def end_block() -> None:
        nonlocal item
        item = None
        if prose:
            points.extend(split_sentences(" ".join(prose)))
            prose.clear()

    for line in lines:
        bullet = _BULLET_RE.match(line)
        if not line.strip() or _is_heading(bullet.group("rest") if bullet else line):
            end_block()
        elif bullet:
            end_block()
            item = [bullet.group("rest")]
            points.append(item[0])
        elif item is not None:
            item.append(line.strip())
            points[-1] = " ".join(item)
        else:
            prose.append(line.strip())
    end_block()
    return points


def _paragraphs(lines: list[str]) -> list[str]:
    """Blank-line separated paragraphs without their headings: a heading has no sentence end, and would
    otherwise be glued to the paragraph's first sentence."""
    paragraphs: list[str] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if not line.strip() or _is_heading(line):
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        current.append(line.strip())
    return paragraphs


def _is_heading(line: str) -> bool:
    stripped = line.strip()
    if _HEADING_RE.match(line) or _BOLD_LINE_RE.match(line):
        return True
    return stripped.endswith((":", "：")) and len(stripped.split()) <= _LEAD_IN_MAX_WORDS


def _clean(point: str) -> str:
    point = _EMPHASIS_RE.sub(lambda m: m.group(1) or m.group(2), point)
    return " ".join(point.split())
