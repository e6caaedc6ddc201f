"""Prose → sentences, for every service that cuts text into points.

data-prep cuts human reviews into points with it and the evaluation cuts free-text reviews with it; it
lives here because no service may import another's internals, and two splitters would cut the same text
two ways. Written against reviewer prose: inline math, citations ("et al."), figure and equation
references and "are: 1. ..." enumerations must not end a sentence.
"""

from __future__ import annotations

import re

__all__ = ["split_sentences"]

# Spans whose dots and spaces never end a sentence: display/inline math, \( \), code, URLs.
_PROTECTED_RE = re.compile(
    r"\$\$.+?\$\$|\$[^$\n]+?\$|\\\(.+?\\\)|\\\[.+?\\\]|`[^`\n]+`|(?:https?://|www\.)\S*[^\s.,;:!?)\]]",
    re.DOTALL,
)
_SENTENCE_END_RE = re.compile(r"[.!?…]+[\"')\]’”]*\s+(?=[\"'(\[“‘$\\]?[A-Z0-9])")
_ABBREVIATIONS = frozenset(
    {
        "e.g",
        "i.e",
        "et",
        "al",
        "etc",
        "cf",
        "vs",
        "v.s",
        "resp",
        "approx",
        "fig",
        "figs",
        "eq",
        "eqs",
        "eqn",
        "sec",
        "secs",
        "tab",
        "thm",
        "def",
        "prop",
        "lem",
        "alg",
        "app",
        "appx",
        "ref",
        "refs",
        "no",
        "nos",
        "dr",
        "mr",
        "ms",
        "prof",
        "st",
        "ch",
        "pp",
        "vol",
        "ed",
        "eds",
        "w.r.t",
        "a.k.a",
        "wrt",
        "aka",
        "viz",
        "ca",
        "corr",
        "cor",
        "assump",
        "obs",
        "ex",
        "exp",
        "incl",
        "max",
        "min",
        "avg",
        "std",
        "dept",
        "univ",
        "jr",
        "sr",
    }
)
_PLACEHOLDER = "\ue001{}\ue002"
_PLACEHOLDER_RE = re.compile("\ue001(\\d+)\ue002")


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences without breaking inside `$...$`, after "e.g.", "et al.", "Fig.",
    "Eq. (3).", initials ("J. Smith") or an enumeration number ("are: 1. Lacking ...")."""
    protected: list[str] = []

    def _protect(m: re.Match[str]) -> str:
        protected.append(m.group(0))
        return _PLACEHOLDER.format(len(protected) - 1)

    flat = _PROTECTED_RE.sub(_protect, " ".join(text.split()))
    pieces, start = [], 0
    for m in _SENTENCE_END_RE.finditer(flat):
        if _is_false_boundary(flat[start : m.start() + 1]):
            continue
        pieces.append(flat[start : m.end()].strip())
        start = m.end()
    pieces.append(flat[start:].strip())
    restore = lambda s: _PLACEHOLDER_RE.sub(lambda m: protected[int(m.group(1))], s)  # noqa: E731
    return [restore(p) for p in pieces if p]


def _is_false_boundary(before: str) -> bool:
    """Whether the '.' ending `before` belongs to an abbreviation, an initial or an enumeration."""
    if not before.endswith("."):
        return False
    words = before[:-1].split()
    if not words:
        return True
    last = words[-1].lstrip("([\"'").lower()
    if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
        return True
    if last.isdigit() and len(last) <= 2:
        previous = words[-2] if len(words) >= 2 else ""
        return len(words) == 1 or previous.endswith(":")
    return False
