"""Review → points: one claim, one strength, one concern, one question each.

Rules found by reading the 1,615 official reviews of that set (numbers are from it):

* STRENGTHS AND WEAKNESSES carries its own structure in ~40 spellings: "Strengths:", "**Weaknesses**",
  "## Strengths", "[Weaknesses]", "Pros:", "Cons：" (full-width colon), "Minor:", "Weaknesses and
  Questions:", labels "S1:", "W2.", "(W1)", "**W1: ...**". A marker line sets the kind of what follows
  and is never a point itself. 146 of the 1,615 sections have no marker at all; their paragraphs are
  "strength"/"weakness" only when they open with a polarity cue ("The main weakness is ...", "My only
  concern ..."), otherwise "other" rather than a guessed polarity.
* Reviewers write a short numbered title and explain it in the next paragraph ("1. Strong performance on
  challenging problems" + blank line + paragraph, Aj3wL41C7p); such a title absorbs that paragraph.
  Sub-bullets (indented, or of another bullet type under an item ending with ":") join their parent.
* LIMITATIONS is a bare "yes"/"Yes." in ~950 of the 1,615 reviews, and "The authors have adequately
  addressed the limitations ..." in many others. Those answers are *dropped*, not kept as kind "other":
  they say nothing about the paper, yet as ground truth a boilerplate generated sentence would "hit"
  them. A limitation section with content keeps its substantive sentences ("Yes, but ..." loses its
  "Yes,"); 1,204 of the 1,615 reviews end up with no limitation point.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from reviewstack.common.sentences import split_sentences
from reviewstack.dataprep.reviews import HumanPoint, HumanReview, PointKind, section_kind

__all__ = ["extract_points", "split_sentences"]

# --- point extraction ----------------------------------------------------------------------------------

# Bullets: "-", "*", "•", "+", "1.", "1)", "(1)", "a.", "(a)", "i.", "(ii)".
# "1.New problem." (no space) counts too when a capital follows; "3.5" never does.
_BULLET_RE = re.compile(
    r"^(?P<marker>[-*•·–+▪◦]|\d{1,2}[.)](?!\d)|\(\d{1,2}\)|[a-hA-H][.)]|\([a-h]\)|\(?[ivx]{1,4}[.)])"
    r"(?:\s+|(?<=[.)])(?=[A-Z*\[(]))(?P<rest>\S.*)$"
)
# Point labels that carry a polarity: "S1:", "W2.", "(W1)", "[W3]", "Weakness 2:", "Concern 1."
_LABEL_RE = re.compile(
    r"^[(\[]?(?P<label>[SWQL]|strength|weakness|concern|question|issue|limitation)\s?#?\d{1,2}[)\]]?"
    r"(?P<sep>\s*[:.)\-–—]\s*|\s+)(?P<rest>.*)$",
    re.IGNORECASE,
)
_LABEL_POLARITY: dict[str, PointKind] = {
    "s": "strength",
    "strength": "strength",
    "w": "weakness",
    "weakness": "weakness",
    "concern": "weakness",
    "issue": "weakness",
}
_EMPHASIS_RES = (
    re.compile(r"\*\*\*(.+?)\*\*\*"),
    re.compile(r"\*\*(.+?)\*\*"),
    re.compile(r"__(.+?)__"),
    re.compile(r"(?<![\w*\\])\*(?!\s)([^*\n]+?)(?<!\s)\*(?![\w*])"),
    re.compile(r"(?<![\w\\])_(?!\s)([^_\n]+?)(?<!\s)_(?!\w)"),
)
# "Minor comments:", "Major remarks" are criticisms whatever the noun.
_MINOR_MAJOR_RE = re.compile(r"^(?:\d+[.)]\s*)?(?:minor|major)\b", re.IGNORECASE)
_RULE_RE = re.compile(r"^\s*(?:[-*_=]\s*){3,}$")  # "----" / "***" horizontal rules
_HEADING_MARK_RE = re.compile(r"^#{1,6}\s*")
_QUOTE_MARK_RE = re.compile(r"^(?:>\s*)+")
_TRAILING_BREAK_RE = re.compile(r"\s*\\$")
_LATEX_TEXTBF_RE = re.compile(r"^\$\\text(?:bf|it)\{(.+?)\}\$")

# Spelling slips are common in markers ("Weaknessess", "Strengthens"), hence the \w* tails.
_STRENGTH_WORDS = (
    r"strength\w*|pros|advantages?|positives?|positive (?:aspects|points)|strong points?|merits?"
)
_WEAKNESS_WORDS = (
    r"weakness\w*|weaknes+|weak points?|cons|disadvantages?|negatives?|concerns?|drawbacks?|shortcomings?|"
    r"criticisms?|issues?|problems?|limitations?|typos?|minor|major|(?:areas?|room) (?:for|of) improvements?|"
    r"(?:the )?weaker side"
)
_OTHER_WORDS = (
    r"(?:detailed |other |additional |general |further |some )?(?:comments?|remarks?|suggestions?|notes?)"
)
# A whole line that is only a marker, once emphasis, "#", "[ ]" and the trailing ":" are gone.
_MARKER_LINE_RE = re.compile(
    rf"^(?:\d+[.)]\s*)?(?:(?:main|major|minor|key|some|other|additional|potential|paper|summary of|"
    rf"possible|overall)\s+)*(?P<word>{_STRENGTH_WORDS}|{_WEAKNESS_WORDS}|{_OTHER_WORDS}|questions?|references?)"
    rf"(?:\s+(?:of (?:the|this) (?:paper|work|submission|method|manuscript)|and (?:questions|suggestions|"
    rf"comments|limitations)|& questions))?(?:\s*\([^)]*\))?(?:\s*\[[^\]]*\])?$",
    re.IGNORECASE,
)
# A marker with text after it: "Strengths: The paper ...", "Weakness. The method ...", "Cons - slow".
_INLINE_MARKER_RE = re.compile(
    rf"^(?P<word>(?:(?:main|major|minor|key)\s+)?(?:{_STRENGTH_WORDS}|weakness\w*|cons|concerns?|"
    rf"minor(?: issues| comments| points)?|major(?: issues| comments| concerns)?))"
    rf"(?:\s*(?:and|&)\s*(?:limitations?|questions?|suggestions?|comments?))?(?:\s*\d{{1,2}})?(?:\s*\([^)]{{0,20}}\))?"
    rf"(?:\s*[:：.]|\s+[\-–])\s*"
    rf"(?P<rest>\S.*)$",
    re.IGNORECASE,
)
# A short sentence introducing a list and naming its polarity: "The strengths are listed as follows:".
_POLAR_LEAD_IN_RE = re.compile(rf"\b(?P<word>{_STRENGTH_WORDS}|{_WEAKNESS_WORDS})\b", re.IGNORECASE)
_TRIVIAL_RE = re.compile(
    r"^(?:n/?a|none|nothing|no|yes|ok|okay|not applicable|no (?:further |other |more )?(?:comments?|"
    r"questions?|concerns?|limitations?|weakness(?:es)?)|same as above|as above|see above|see below|"
    r"(?:please\s+|kindly\s+)?(?:see|refer to|refer|referring to|cf\.?)\s+(?:to\s+)?(?:the\s+|my\s+)?"
    r"(?:above|below|previous|"
    r"\[?weakness\w*|\[?question\w*|\[?strength\w*|limitation\w*|suggestions?|summary|comments?|section|part|"
    r"points?)\b"
    r"[\w\s/&,.\-]{0,50}|-+)[\s.!]*$",
    re.IGNORECASE,
)
# "Yes, the authors have adequately addressed the limitations ..." and relatives.
_LIMITATION_BOILERPLATE_RE = re.compile(
    r"^(?:(?:yes|no|partially|partly|adequate(?:ly)?|sufficient(?:ly)?)\b[,.;:!]?\s*)?"
    r"(?:(?:i think|i believe|overall|in general)[, ]+)?"
    r"(?:(?:the authors?|they|limitations?|the limitations?|this|these|it|the paper|societal impacts?)"
    r"\b[^.?!]{0,160}?\b|(?:clearly |adequately |well )?)"
    r"(?:discuss(?:ed|es)?|address(?:ed|es)?|describ(?:ed|es)|mention(?:ed|s)?|provide[ds]?|acknowledg(?:ed|es)|"
    r"includ(?:ed|es)|list(?:ed|s)?|state[ds]?|cover(?:ed|s)?|present(?:ed|s)?|explain(?:ed|s)?|"
    r"analy[sz](?:ed|es)|wr(?:ote|ites|itten)|touch(?:ed|es) (?:up)?on)\b[^.?!]*[.!]?$",
    re.IGNORECASE,
)
# "I believe there are no potential negative societal impacts of this work." / "No ethical concerns."
_NO_IMPACT_RE = re.compile(
    r"^(?:i (?:think|believe|see)\s+)?(?:there (?:are|is|will be)\s+)?(?:no|not any|none)\b[^.?!]{0,40}?"
    r"\b(?:societal|social|ethic\w*|negative|broader)\b[^.?!]{0,40}?\b(?:impacts?|concerns?|issues?|risks?|"
    r"consequences?)\b[^.?!]{0,60}[.!]?$",
    re.IGNORECASE,
)
_NEGATION_RE = re.compile(
    r"\b(?:not|n't|lack\w*|insufficient\w*|inadequate\w*|missing|only|but|however|should|could|would|"
    r"limited|more|further|suggest\w*|recommend\w*|unclear|barely|briefly|except|although|though)\b",
    re.IGNORECASE,
)
# A bare answer word opening a longer sentence ("Yes, but ..."); needs its punctuation ("No negative ..."
# is not the answer "No").
_BARE_ANSWER_RE = re.compile(r"^(?:yes|no|partially|partly)[,.;:!]+\s*", re.IGNORECASE)
_ANSWER_ONLY_RE = re.compile(r"^(?:yes|no|partially|partly|n/?a)\W*$", re.IGNORECASE)
# A reference-list entry a reviewer appended: "[1] Yang, H., et al. "Accelerating ..." arXiv 2023."
# "[1] Yang, H., et al. ...", "[a] McAllester, D. ...", "Dytso, A., & Poor, H. V. (2020). ...",
# "Alon, Noga, et al. "Online learning ..." COLT 2015."
_CITATION_RE = re.compile(
    r"^(?:\[[\w ,]{1,8}\]\s*\S|[A-Z][^\s,]+,\s+(?:[A-Z]\.\s*)+(?:,|&|and)|[^.]{0,80}\bet al\.?,?\s*[\"“])"
    r".*(?:\b(?:19|20)\d{2}\b|arxiv)",
    re.IGNORECASE,
)
# A bare reference label with a title or link: "[1] Denoising Diffusion Bridge Models", "[4] http://...".
_SHORT_REFERENCE_RE = re.compile(r"^\[\w{1,3}\]\s+\S+(?:\s+\S+){0,9}$")
_WORD_RE = re.compile(r"[^\W_]+(?:[-'’][^\W_]+)*")

MIN_POINT_WORDS = 4
LONG_POINT_WORDS = 150
CHUNK_SENTENCES = 3
_LEAD_IN_MAX_WORDS = 15
_SPENT_LEAD_IN_WORDS = 8
_GENERIC_LEAD_IN_RE = re.compile(r"\b(?:following|as follows|below|listed)\b", re.IGNORECASE)
# An unmarked paragraph that names its own polarity in its first words: "The main weakness is ...",
# "My only concern is ...", "One key concern of the proposed method ...", "The main strength is ...".
_CUE_RE = re.compile(
    r"^(?:(?:however|overall|also|additionally|in addition|finally|first(?:ly)?|second(?:ly)?|third(?:ly)?)"
    r",?\s+)?"
    r"(?:the|a|one|another|my|some|two|three|several|other)\s+(?:[\w-]+\s+){0,2}?"
    rf"(?P<word>{_STRENGTH_WORDS}|weakness(?:es)?|weak points?|concerns?|limitations?|drawbacks?|"
    r"shortcomings?|issues?|problems?|difficult(?:y|ies))\b",
    re.IGNORECASE,
)


@dataclass
class _Item:
    """A point being assembled from lines."""

    lines: list[str]
    kind: PointKind | None
    bullet: str | None = None
    indent: int = 0
    lead_in: bool = False
    closed: bool = False
    children: int = 0


@dataclass
class _ParseState:
    items: list[_Item] = field(default_factory=list)
    polarity: PointKind | None = None
    skipping: bool = False
    blank_before: bool = True

    @property
    def current(self) -> _Item | None:
        return self.items[-1] if self.items else None


def extract_points(review: HumanReview) -> list[HumanPoint]:
    """Cut a review into points, in order. A review without sections is cut as one "review" section
    of kind "other"."""
    sections = review.sections or ({"review": review.text} if review.text.strip() else {})
    points: list[HumanPoint] = []
    for section, text in sections.items():
        for kind, point_text in _section_points(section, text):
            points.append(HumanPoint(point_text, review.reviewer_id, section, kind, len(points)))
    return points


def _section_points(section: str, text: str) -> Iterator[tuple[PointKind, str]]:
    default = section_kind(section)
    for item in _parse_items(text, default):
        body = _clean_text(" ".join(item.lines))
        kind: PointKind = item.kind or default or _cue_kind(body)
        chunks = split_sentences(body) if kind == "summary" else _split_long(body)
        for chunk in chunks:
            chunk = _strip_limitation_boilerplate(chunk) if kind == "limitation" else chunk
            if _is_substantive(chunk):
                yield kind, chunk


def _parse_items(text: str, default: PointKind | None) -> list[_Item]:
    """Group a section's lines into items: bullets, paragraphs, titles with their explanation."""
    state = _ParseState(polarity=default)
    for raw in text.split("\n"):
        if not raw.strip() or _RULE_RE.match(raw):
            state.blank_before = True
            if state.current and not state.current.lead_in:
                state.current.closed = True
            continue
        _consume_line(state, raw.expandtabs(4), default)
        state.blank_before = False
    return [i for i in state.items if not _is_spent_lead_in(i)]


def _consume_line(state: _ParseState, raw: str, default: PointKind | None) -> None:
    indent = len(raw) - len(raw.lstrip())
    bullet, content, indent = _split_bullet(_strip_decoration(raw.strip()), indent)
    if _apply_marker(state, content, default, is_bullet=bullet is not None):
        return
    polarity, content, labelled = _inline_polarity(content, default)
    if polarity is not None:
        state.polarity = polarity
        state.skipping = False
    if labelled and not state.skipping:
        _start_item(state, content, bullet or "label", indent)
        return
    if state.skipping:
        return
    if _CITATION_RE.match(content):
        _start_item(state, content, bullet, indent)  # its own item, dropped later, never absorbed
    elif bullet is not None:
        _add_bullet(state, bullet, content, indent)
    else:
        _add_text(state, content, indent, is_heading=raw.lstrip().startswith("#"))


def _split_bullet(line: str, indent: int) -> tuple[str | None, str, int]:
    """(bullet type, text, indent). "* * line 42: ..." (two markers) is a sub-bullet: each extra marker
    counts as two columns of indentation."""
    m = _BULLET_RE.match(line)
    if not m:
        return None, line, indent
    bullet, content = _bullet_type(m.group("marker")), m.group("rest")
    while (inner := _BULLET_RE.match(content)) and _bullet_type(inner.group("marker")) == "dash":
        content, indent = inner.group("rest"), indent + 2
    return bullet, content, indent


def _strip_decoration(line: str) -> str:
    """Drop quote marks, heading hashes, a trailing hard break and LaTeX-bold wrappers of a line."""
    line = _QUOTE_MARK_RE.sub("", line)
    line = _HEADING_MARK_RE.sub("", line)
    line = _TRAILING_BREAK_RE.sub("", line)
    return _LATEX_TEXTBF_RE.sub(r"\1", line).strip()


def _bare(text: str) -> str:
    """Text without emphasis, brackets and trailing colon: what a marker test looks at."""
    text = _strip_emphasis(text).strip()
    text = text.strip("[]").strip()
    return re.sub(r"[\s:：.,\-–—]+$", "", text).strip().strip("[]*_ ").strip()


def _apply_marker(state: _ParseState, content: str, default: PointKind | None, *, is_bullet: bool) -> bool:
    """If the line is only a marker ("**Weaknesses**", "## Pros", "Minor:"), set the polarity."""
    bare = _bare(content)
    m = _MARKER_LINE_RE.match(bare)
    lead_in_word = None if m or is_bullet else _polar_lead_in_word(content)
    if m:
        polarity = _polarity_of("minor" if _MINOR_MAJOR_RE.match(bare) else m.group("word"), default)
    elif lead_in_word:
        polarity = _polarity_of(lead_in_word, default)
    else:
        return False
    state.skipping = m is not None and m.group("word").lower().startswith("reference")
    if polarity is not None:
        state.polarity = polarity
    if state.current:
        state.current.closed = True
    state.items.append(_Item([], None, closed=True))  # a barrier: nothing joins across a marker
    return True


def _polar_lead_in_word(content: str) -> str | None:
    """The polarity word of "However, I have the following concerns:" / "The strengths are listed as
    follows:" - short, ends with a colon, names one polarity. Such a line introduces a list and is not a
    point. None for any other line."""
    stripped = _strip_emphasis(content).strip()
    if not stripped.endswith((":", "：")) or len(stripped.split()) > 14:
        return None
    words = [m.group("word") for m in _POLAR_LEAD_IN_RE.finditer(stripped)]
    kinds = {_polarity_of(w, None) for w in words}
    return words[0] if len(kinds) == 1 else None


def _polarity_of(word: str, default: PointKind | None) -> PointKind | None:
    """Kind a marker word announces; outside STRENGTHS AND WEAKNESSES the section decides."""
    if default is not None:
        return default
    w = word.lower()
    if re.fullmatch(_STRENGTH_WORDS, w):
        return "strength"
    if re.fullmatch(_WEAKNESS_WORDS, w):
        return "weakness"
    if w.startswith("question"):
        return "question"
    return "other"


def _inline_polarity(content: str, default: PointKind | None) -> tuple[PointKind | None, str, bool]:
    """ "Strengths: The paper ..." or "W1: Scalability ..." -> (polarity, text after the marker, whether a
    marker or label was found). Q1/L1 labels have no polarity; they still start a new point."""
    bare = _strip_emphasis(content).strip()
    m = _INLINE_MARKER_RE.match(bare)
    if m:
        word = m.group("word").split()[-1]
        return _polarity_of(word, default) or "other", m.group("rest"), True
    m = _LABEL_RE.match(bare)
    if m and _is_real_label(m):
        rest = m.group("rest").strip() or content
        polarity = _LABEL_POLARITY.get(m.group("label").lower())
        return (default or polarity) if polarity else None, rest, True
    return None, content, False


def _is_real_label(m: re.Match[str]) -> bool:
    """ "W1:", "S2.", "(W3)", "Weakness 2:"; a bare letter must be upper case, and without a separator
    only S/W/Q before a capital count ("W1 The method ..."), so "L2 norm" or "s1 is" stay text."""
    label, separated = m.group("label"), bool(m.group("sep").strip())
    if len(label) == 1 and not label.isupper():
        return False
    if separated:
        return True
    rest = m.group("rest")
    return (len(label) > 1 or label in "SWQ") and rest[:1].isupper()


def _start_item(state: _ParseState, content: str, bullet: str | None, indent: int) -> None:
    if state.current:
        state.current.closed = True
    state.items.append(_Item([content], state.polarity, bullet, indent, lead_in=_is_lead_in(content)))


def _add_bullet(state: _ParseState, bullet: str, content: str, indent: int) -> None:
    """A bullet joins the current item when it is its sub-bullet, else it starts a new item."""
    cur = state.current
    if cur is not None and cur.bullet is not None and cur.lines and _is_child(cur, bullet, indent):
        _append(cur, content, ";")
        cur.children += 1
        cur.closed = False
        return
    if cur is not None and cur.bullet is None and cur.lead_in and cur.lines:
        cur.children += 1  # a non-bullet lead-in ("Some concerns:") followed by a list
        cur.closed = True
    _start_item(state, content, bullet, indent)


def _is_child(parent: _Item, bullet: str, indent: int) -> bool:
    if indent >= parent.indent + 2:
        return True
    return parent.lead_in and bullet != parent.bullet


def _bullet_type(marker: str) -> str:
    if marker[0].isdigit():
        return "number" + marker[-1]
    if marker.startswith("("):
        return "paren"
    if marker[0].isalpha():
        return "letter" if len(marker) == 2 else "roman"
    return "dash"


def _add_text(state: _ParseState, content: str, indent: int, *, is_heading: bool) -> None:
    """Plain text continues the current item (same paragraph, indented under a bullet, or the
    explanation of a title) or starts a new paragraph item."""
    cur = state.current
    if cur is not None and cur.lines and not is_heading:
        continues_paragraph = not state.blank_before and not cur.closed
        under_bullet = cur.bullet is not None and indent >= cur.indent + 2
        explains_title = cur.lead_in and not cur.children and len(cur.lines) == 1
        if continues_paragraph or under_bullet or explains_title or _is_short_title(cur):
            titled = not continues_paragraph and (explains_title or _is_short_title(cur))
            _append(cur, content, ":" if titled else "")
            cur.lead_in = False
            cur.closed = False
            return
    _start_item(state, content, None, indent)
    if is_heading and state.current:
        state.current.lead_in = True


def _append(item: _Item, content: str, separator: str) -> None:
    """Join a line to an item; a sub-bullet after "; ", an explanation after its title's ": ", unless the
    text before already ends in punctuation."""
    last = _strip_emphasis(item.lines[-1]).rstrip()
    if separator and last and last[-1] not in ".:;!?,":
        item.lines[-1] = item.lines[-1].rstrip() + separator
    item.lines.append(content)


def _is_lead_in(content: str) -> bool:
    """A short line ending with a colon, or wholly in bold: a title for what follows."""
    stripped = content.strip()
    if len(stripped.split()) > _LEAD_IN_MAX_WORDS:
        return False
    return stripped.endswith((":", "：")) or bool(re.fullmatch(r"\*\*[^*]+\*\*[:：.]?", stripped))


def _is_short_title(item: _Item) -> bool:
    """A numbered item like "1. Strong performance on challenging problems" with no final punctuation,
    followed by a blank line and its explanation (Aj3wL41C7p)."""
    if item.bullet in (None, "dash", "label") or len(item.lines) != 1 or item.children:
        return False
    text = _strip_emphasis(item.lines[0]).strip()
    return len(text.split()) <= 12 and not text.endswith((".", "?", "!", ")", "]"))


def _is_spent_lead_in(item: _Item) -> bool:
    """A non-bullet line introducing a list ("I want to know:", "The main concerns are as follows:")
    says nothing by itself once its items follow as their own points; a longer one that names a topic
    ("The paper has quite a few issues related to writing:") stays."""
    if not (item.lead_in and item.children and len(item.lines) == 1):
        return False
    text = _strip_emphasis(item.lines[0]).strip()
    return len(text.split()) < _SPENT_LEAD_IN_WORDS or bool(_GENERIC_LEAD_IN_RE.search(text))


def _strip_emphasis(text: str) -> str:
    for pattern in _EMPHASIS_RES:
        text = pattern.sub(r"\1", text)
    return text


def _clean_text(text: str) -> str:
    """Point text: emphasis and stray markers gone, whitespace collapsed, trailing colon dropped."""
    text = _strip_emphasis(text)
    text = text.replace("**", "").replace("__", "")
    text = " ".join(text.split()).strip()
    return re.sub(r"\s*[:：]$", "", text).strip()


def _cue_kind(text: str) -> PointKind:
    """Kind of an unmarked STRENGTHS AND WEAKNESSES paragraph from its opening words, else "other"."""
    m = _CUE_RE.match(text)
    if not m:
        return "other"
    word = m.group("word").lower()
    return "strength" if re.fullmatch(_STRENGTH_WORDS, word) else "weakness"


def _split_long(text: str) -> list[str]:
    """Keep a point whole unless it is very long (> LONG_POINT_WORDS words): then chunks of
    CHUNK_SENTENCES sentences, a short tail merged into the chunk before it."""
    if len(text.split()) <= LONG_POINT_WORDS:
        return [text]
    sentences = split_sentences(text)
    chunks = [" ".join(sentences[i : i + CHUNK_SENTENCES]) for i in range(0, len(sentences), CHUNK_SENTENCES)]
    if len(chunks) > 1 and len(sentences) % CHUNK_SENTENCES == 1:
        chunks[-2:] = [f"{chunks[-2]} {chunks[-1]}"]
    return chunks


def _strip_limitation_boilerplate(text: str) -> str:
    """Drop the "yes / the authors discussed the limitations" sentences, keep any that say more."""
    kept = []
    for sentence in split_sentences(text):
        if _ANSWER_ONLY_RE.match(sentence) or _NO_IMPACT_RE.match(sentence):
            continue
        if _LIMITATION_BOILERPLATE_RE.match(sentence) and not _NEGATION_RE.search(sentence):
            continue
        rest = _BARE_ANSWER_RE.sub("", sentence)
        kept.append(rest[:1].upper() + rest[1:])
    return " ".join(kept).strip()


def _is_substantive(text: str) -> bool:
    """At least MIN_POINT_WORDS words, not "N/A"/"See above"/"yes", not a citation line."""
    if len(_WORD_RE.findall(text)) < MIN_POINT_WORDS:
        return False
    return not (_TRIVIAL_RE.match(text) or _CITATION_RE.match(text) or _SHORT_REFERENCE_RE.match(text))
