"""A paper's text: from its file bytes (Markdown, text, PDF when pypdf is installed), cleaned down to
what a reviewer model should read. Data-prep (training prompts) and the review service (serving prompts)
share this one implementation, so a model is served the text it was trained on.

Cleaning:
The papers come from a docling-style PDF parser: every heading is a flat `## ` line whatever its depth
(section numbers such as "3.1" are part of the heading text, not of the Markdown level), figures are
`<!-- image -->` placeholders, `<`, `>` and `&` are HTML-escaped, and submission ("early") versions carry
the template's line numbers. What a review model should not spend its 11k-token prompt on:

* the author block between the title and the Abstract (names, affiliations, e-mails, "Anonymous
  Author(s)", footnote markers) - it says nothing about the work and, for camera-ready versions, would
  de-anonymise it;
* the bibliography - long, and only a list of other papers' titles;
* the NeurIPS Paper Checklist - boilerplate questions and guidelines copied from the template, 10-25 KB a
  paper, present in 397 of the 400 NeurIPS 2025 papers (3 without its heading);
* acknowledgments and funding statements.

Every rule removes a block only when it is recognised with confidence; when in doubt the text stays.
Appendices are kept unless asked (`drop_appendix=True`). Measured on the 400-paper NeurIPS 2025 set, the
checklist sits *before* the appendix in about half the papers, so the checklist's end is found from its
own structure (its 16 numbered items and their Answer/Justification/Guidelines parts), never by cutting
everything after its heading.
"""

from __future__ import annotations

import html
import io
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from reviewstack.common.errors import InvalidArgument

__all__ = ["PAPER_SUFFIXES", "CleanedPaper", "clean_paper", "decode_paper"]

# the files a paper can be reviewed from (`decode_paper` reads each)
PAPER_SUFFIXES = (".md", ".markdown", ".txt", ".pdf")


@dataclass(frozen=True)
class CleanedPaper:
    """The cleaned text, the title found in it ("" if none) and the names of the blocks removed."""

    text: str
    title: str
    removed: list[str]


# --- Markdown structure -------------------------------------------------------------------------------

_HEADING_RE = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t]*$")
# A "heading" that is only a line number ("## 569" in HgfMIHcNao) is parser debris, not a section.
_LINE_NUMBER_RE = re.compile(r"^\d{1,4}$")
_IMAGE_RE = re.compile(r"[ \t]*<!--\s*image\s*-->[ \t]*")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# The parser writes a literal "|" inside a table cell as `&#124;`; unescaping it would add a column.
_PIPE_ENTITY_RE = re.compile(r"&(?:#124|#x7[cC]|vert|verbar|VerticalLine);")
_PIPE_PLACEHOLDER = "\ue000"
_BLANK_RUN_RE = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")

# --- Front matter -------------------------------------------------------------------------------------

_ABSTRACT_HEADING_RE = re.compile(r"^(?:\d+\.?\s+)?abstract[.:]?$", re.IGNORECASE)
# "Abstract. We ..." / "**Abstract**: ..." / "Abstract-We ..." written as a paragraph, not a heading.
_ABSTRACT_PARAGRAPH_RE = re.compile(r"^\W{0,4}abstract\W{0,4}(?:[.:\-—–]|\s)\s*\S", re.IGNORECASE)
_SECTION_ONE_RE = re.compile(r"^(?:1\.?|I\.)\s+\S|^introduction\b", re.IGNORECASE)
# A numbered or standard section heading is never the title ("1 Introduction", "2.1 Setup").
# "Abstract Rendering: ..." (EXIKFM1Q9R) is a title, "Abstract" alone is not.
_SECTION_HEADING_RE = re.compile(r"^(?:\d+(?:\.\d+)*\.?\s|(?:introduction|abstract)\W*$)", re.IGNORECASE)
_CAPTION_RE = re.compile(r"^(?:figure|fig\.|table)\s*\d+\s*[:.]", re.IGNORECASE)
_AUTHOR_HINT_RE = re.compile(
    r"@|anonymous author|affiliation|address|university|institute|laborator|school of|department|"
    r"college|research|academy|\bcorresponding\b|equal contribution|[∗†‡§¶*]",
    re.IGNORECASE,
)
# Function words that prose has and author lists or affiliations lack.
_PROSE_WORDS = frozenset(
    {
        "the",
        "a",
        "an",
        "we",
        "is",
        "are",
        "this",
        "that",
        "these",
        "to",
        "which",
        "our",
        "it",
        "be",
        "can",
        "its",
        "was",
        "were",
        "has",
        "have",
        "not",
        "by",
        "show",
    }
)
_NAME_PARTICLES = frozenset(
    {
        "van",
        "von",
        "der",
        "den",
        "de",
        "del",
        "della",
        "di",
        "da",
        "du",
        "la",
        "le",
        "bin",
        "al",
        "dos",
        "das",
        "y",
        "and",
    }
)
_NAME_MARKERS_RE = re.compile(r"[∗†‡§¶*,\d]+")
# The parser splits accented letters into a spacing accent and the letter: "Andr´ es", "Voráˇ cek".
_SPACING_DIACRITIC_RE = re.compile(r"\s?[´`¨ˇ˚˜¸˘˙˝]\s?")
# A wrapped title line that ends in one of these words goes on in the next heading (5TTUwJGqHT).
_TITLE_JOINERS = frozenset(
    {
        "for",
        "of",
        "and",
        "with",
        "via",
        "in",
        "on",
        "to",
        "the",
        "a",
        "an",
        "from",
        "by",
        "under",
        "through",
        "towards",
    }
)
_NAME_TOKEN_RE = re.compile(r"^(?:[A-Z][\w'’.\-]*|[A-Z]\.)$")

# --- Back matter --------------------------------------------------------------------------------------

_REFERENCES_RE = re.compile(
    r"^(?:[A-Z0-9]{1,3}(?:\.\d+)*\.?\s+)?(?:appendix\s+)?(?:references|bibliography|literature cited)"
    r"(?:\s+\d+)?\W*$",
    re.IGNORECASE,
)
_YEAR_OR_ARXIV_RE = re.compile(r"\b(?:19|20)\d{2}[a-z]?\b|arxiv", re.IGNORECASE)
_ACK_HEADING_RE = re.compile(
    r"^(?:[A-Z0-9]{1,3}(?:\.\d+)*\.?\s+)?(?:acknowledge?(?:ments?)?|funding|disclosure of funding)"
    r"(?:\s+(?:and\s+disclosure\s+of\s+funding|declaration|statement|disclosure|sources))?\W*$",
    re.IGNORECASE,
)
_ACK_PARAGRAPH_RE = re.compile(r"^\W{0,4}acknowledge?ments?\W{0,4}(?:[.:]|\s)\s*\S", re.IGNORECASE)
# "## NeurIPS Paper Checklist 464": submission versions append the line number (Wf3EbtqGdw).
_CHECKLIST_HEADING_RE = re.compile(
    r"^(?:#+\s*)?(?:neurips\s+)?paper\s+checklist(?:\s+\d{1,4})?\W*$", re.IGNORECASE
)
_CHECKLIST_ITEMS = (
    r"claims|limitations?|theory|experimental result|experimental setting|experiments? statistical|"
    r"experiment\w* compute|experiment context|compute resources|code of ethics|broader impacts?|safeguards|"
    r"licen[sc]es|new\s*assets|crowdsourcing|institutional review|declaration of llm|open access"
)
# Item titles are matched with any run of spaces between words ("Institutional  Review  Board" in 4kT9Jn7LSB).
_CHECKLIST_ITEM_RE = re.compile(
    r"^\d{1,2}\.\s*(?:" + _CHECKLIST_ITEMS.replace(" ", r"\s+") + ")", re.IGNORECASE
)
_CHECKLIST_PART_RE = re.compile(
    r"^(?:answer\s*:\s*\[|justification\s*:|guidelines\s*:|important,\s*please)", re.IGNORECASE
)
_CHECKLIST_FIRST_ITEM_RE = re.compile(r"^(?:#+\s*)?1\.\s*claims\b", re.IGNORECASE)
_CHECKLIST_QA_RE = re.compile(r"^(?:#+\s*)?(?:question|answer)\s*:", re.IGNORECASE)
# Consecutive checklist items sit 0.5-3 KB apart; a longer gap means the checklist has ended.
_CHECKLIST_MAX_GAP_CHARS = 8000
_APPENDIX_HEADING_RE = re.compile(
    r"^(?:appendix|appendices|appendixes|technical appendi|supplementa|supplement\b|"
    r"(?:table of )?contents\b)",
    re.IGNORECASE,
)
_LETTER_SECTION_RE = re.compile(r"^(?:appendix\s+)?([A-Z])(?:\.\d+)*[.:]?\s+\S")


@dataclass(frozen=True)
class _Heading:
    line: int
    text: str


@dataclass(frozen=True)
class _Span:
    """Lines [start, end) to drop, with the name reported in `CleanedPaper.removed`."""

    start: int
    end: int
    label: str


def clean_paper(text: str, *, drop_appendix: bool = False, title_hint: str | None = None) -> CleanedPaper:
    """Clean one paper's Markdown; see the module docstring for what goes and why.

    `title_hint` (e.g. the title from the review record) is used only when the text has no title heading
    of its own, as in 6j9xJ9pBjm, whose first heading is "Abstract".
    """
    lines, had_images = _normalise(text).split("\n"), _IMAGE_RE.search(text) is not None
    headings = _find_headings(lines)
    title, front_spans = _front_matter(lines, headings)
    body_start = max((s.end for s in front_spans), default=0)
    spans = list(front_spans)
    spans += _reference_spans(lines, headings, body_start)
    spans += _checklist_spans(lines, headings, body_start)
    spans += _acknowledgment_spans(lines, headings, body_start)
    spans += _line_number_spans(lines)
    if drop_appendix:
        spans += _appendix_spans(lines, headings, spans, body_start)
    if not title and title_hint:
        title = " ".join(title_hint.split())
    body = _drop_spans(lines, spans)
    out = (f"## {title}\n\n" if title else "") + body
    removed = _removed_labels(spans) + (["image placeholders"] if had_images else [])
    return CleanedPaper(text=_BLANK_RUN_RE.sub("\n\n", out).strip() + "\n", title=title, removed=removed)


# --- normalisation ------------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    """Unescape entities, drop image placeholders and control characters (NULs occur in 5 papers)."""
    text = _CONTROL_RE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _IMAGE_RE.sub("", text)
    return "\n".join(_unescape_line(line) for line in text.split("\n"))


def _unescape_line(line: str) -> str:
    """HTML-unescape one line, keeping escaped pipes inside table rows (1,595 of them in the set)."""
    if "&" not in line:
        return line
    if line.lstrip().startswith("|"):
        protected = _PIPE_ENTITY_RE.sub(_PIPE_PLACEHOLDER, line)
        return html.unescape(protected).replace(_PIPE_PLACEHOLDER, "&#124;")
    return html.unescape(line)


def _find_headings(lines: Sequence[str]) -> list[_Heading]:
    """All Markdown headings of any level, skipping line-number debris ("## 569")."""
    found = []
    for i, line in enumerate(lines):
        m = _HEADING_RE.match(line)
        if m and m.group(2) and not _LINE_NUMBER_RE.match(m.group(2)):
            found.append(_Heading(i, m.group(2)))
    return found


def _line_number_spans(lines: Sequence[str]) -> list[_Span]:
    """Runs of 3+ paragraphs that are each one increasing integer: the submission template's line numbers,
    which the parser emits on their own wherever a page has no text beside them (64 of the 400 papers,
    190 KB in all, e.g. "15 / 16 / ... / 32" before the title of 0Y4gjqdvC6)."""
    spans, run = [], []
    for block in [*_paragraphs(lines, 0, len(lines)), (len(lines), len(lines))]:
        text = _block_text(lines, block) if block[0] < len(lines) else ""
        number = int(text) if block[1] - block[0] == 1 and _LINE_NUMBER_RE.match(text) else None
        if number is not None and (not run or number > run[-1][1]):
            run.append((block, number))
            continue
        if len(run) >= 3:
            spans.append(_Span(run[0][0][0], run[-1][0][1], "line numbers"))
        run = [(block, number)] if number is not None else []
    return spans


def _paragraphs(lines: Sequence[str], start: int, end: int) -> list[tuple[int, int]]:
    """Blank-line separated blocks within [start, end), as line ranges."""
    blocks, i = [], start
    while i < end:
        if not lines[i].strip():
            i += 1
            continue
        j = i
        while j < end and lines[j].strip():
            j += 1
        blocks.append((i, j))
        i = j
    return blocks


def _block_text(lines: Sequence[str], block: tuple[int, int]) -> str:
    return " ".join(lines[block[0] : block[1]]).strip()


# --- front matter -------------------------------------------------------------------------------------


def _front_matter(lines: Sequence[str], headings: Sequence[_Heading]) -> tuple[str, list[_Span]]:
    """Find the title and the spans to drop before the paper's first real content.

    Returns the title ("" if none found) and spans for debris before the title, the title lines
    themselves (re-emitted as one `## ` line) and the author block.
    """
    abstract_line = _abstract_line(lines, headings)
    search_end = abstract_line if abstract_line is not None else min(len(lines), 150)
    title_lines = _title_lines(lines, headings, search_end)
    spans: list[_Span] = []
    title = ""
    author_start = 0
    if title_lines:
        title = " ".join(" ".join(lines[i].lstrip("#").split()) for i in title_lines)
        if title_lines[0] > 0 and not any(
            _is_prose(_block_text(lines, b)) for b in _paragraphs(lines, 0, title_lines[0])
        ):
            spans.append(_Span(0, title_lines[0], "front-matter debris"))
        spans.append(_Span(title_lines[0], title_lines[-1] + 1, "title line"))
        author_start = title_lines[-1] + 1
    author_end = abstract_line if abstract_line is not None else _unlabelled_body_start(lines, author_start)
    if author_end is not None and author_end > author_start:
        spans += _author_block_spans(lines, author_start, author_end, labelled=abstract_line is not None)
    return title, spans


def _abstract_line(lines: Sequence[str], headings: Sequence[_Heading]) -> int | None:
    """Line of the Abstract heading (or of an "Abstract." paragraph) in the first 300 lines."""
    for h in headings:
        if h.line > 300:
            break
        if _ABSTRACT_HEADING_RE.match(h.text.strip("*_ ")):
            return h.line
    for i, line in enumerate(lines[:300]):
        if _ABSTRACT_PARAGRAPH_RE.match(line.strip()) and len(line.split()) >= 12:
            return i
    return None


def _title_lines(lines: Sequence[str], headings: Sequence[_Heading], end: int) -> list[int]:
    """The title: the first heading before `end`, plus headings that continue it.

    Titles are split over several `## ` lines when the PDF title wraps ("Modality-Aware SAM:" /
    "Sharpness-Aware-Minimization Driven Gradient" / "Modulation for Harmonized ..." in 22O1ejTxj3),
    and author names are also headings ("## Linus Aronsson" in 0E2Um9n3YK), so a following heading
    continues the title only if it comes right after it and does not look like a person or affiliation.
    """
    candidates = [h for h in headings if h.line < end]
    if not candidates or candidates[0].line > 80 or _SECTION_HEADING_RE.match(candidates[0].text):
        return []
    result = [candidates[0].line]
    for prev, h in itertools.pairwise(candidates):
        if h.line != result[-1] + 1 and any(lines[k].strip() for k in range(result[-1] + 1, h.line)):
            break
        if prev.line != result[-1] or not _continues_title(prev.text, h.text):
            break
        result.append(h.line)
    return result


def _continues_title(previous: str, text: str) -> bool:
    if _AUTHOR_HINT_RE.search(text) or _ABSTRACT_HEADING_RE.match(text):
        return False
    last_word = previous.split()[-1].lower() if previous.split() else ""
    if previous.rstrip().endswith((":", "-", "—", "–")) or last_word in _TITLE_JOINERS:
        return True
    return text[:1].islower() or not _looks_like_name_heading(text)


def _looks_like_name_heading(text: str) -> bool:
    """True for "Yang Xu", "Bo Leng ∗", "Juho Lee KAIST", "♠ Tianle Li, ♠ Jihai Zhang", "Andr´ es Guzm´ an":
    capitalised words, initials, particles and footnote markers only (no colon, no lower-case words)."""
    text = _SPACING_DIACRITIC_RE.sub("", text)
    if ":" in text:
        return False
    tokens = [t for t in _NAME_MARKERS_RE.sub(" ", text).split() if t.lower() not in _NAME_PARTICLES]
    tokens = [t for t in tokens if any(c.isalpha() for c in t)]
    return bool(tokens) and all(_NAME_TOKEN_RE.match(t) for t in tokens)


def _is_prose(paragraph: str) -> bool:
    """A paragraph of running text (an abstract, a caption), as opposed to names or affiliations."""
    words = [w.lower().strip(".,;:()") for w in paragraph.split() if "@" not in w]
    if len(words) < 25:
        return False
    return sum(w in _PROSE_WORDS for w in words) / len(words) >= 0.08


def _unlabelled_body_start(lines: Sequence[str], start: int) -> int | None:
    """Where the body begins in a paper without an Abstract heading, or None if unsure.

    The first prose paragraph (an unlabelled abstract) or the first "1 Introduction" heading, whichever
    comes first, within 120 lines of the title; everything before it must look like an author block.
    """
    for block in _paragraphs(lines, start, min(len(lines), start + 120)):
        text = _block_text(lines, block)
        heading = _HEADING_RE.match(lines[block[0]])
        if heading and _SECTION_ONE_RE.match(heading.group(2)):
            return block[0]
        if _is_prose(text) and not _CAPTION_RE.match(text):
            return block[0]
    return None


def _author_block_spans(lines: Sequence[str], start: int, end: int, *, labelled: bool) -> list[_Span]:
    """Spans of [start, end) to drop as the author block, keeping teaser-figure captions.

    Many camera-ready papers put a teaser figure between the authors and the abstract ("Figure 1: ..."
    in 0yowBBK6tT and 19 others); its caption is body text and stays. With no Abstract heading, the
    block must show author evidence (e-mail, affiliation words, markers) or nothing is dropped.
    """
    blocks = _paragraphs(lines, start, end)
    if not blocks:
        return []
    kept = [b for b in blocks if _CAPTION_RE.match(_block_text(lines, b))]
    spans, cursor = [], start
    for b in [*kept, (end, end)]:
        if b[0] > cursor:
            spans.append(_Span(cursor, b[0], "author block"))
        cursor = b[1]
    if not labelled and not any(
        _AUTHOR_HINT_RE.search(lines[i]) for s in spans for i in range(s.start, s.end)
    ):
        return []
    return spans


# --- back matter --------------------------------------------------------------------------------------


def _section_end(headings: Sequence[_Heading], index: int, n_lines: int) -> int:
    """Line where the section opened by headings[index] ends (the next heading, or the end)."""
    return headings[index + 1].line if index + 1 < len(headings) else n_lines


def _looks_like_bibliography(lines: Sequence[str], start: int, end: int) -> bool:
    """Most entries carry a year or an arXiv id; tells the bibliography from a heading reused in an
    appendix ("References" over lists of reference captions in 83HlJrZigZ)."""
    entries = [line for line in lines[start:end] if len(line.split()) >= 4]
    if len(entries) < 2:
        return False
    return sum(bool(_YEAR_OR_ARXIV_RE.search(e)) for e in entries) / len(entries) >= 0.5


def _reference_spans(lines: Sequence[str], headings: Sequence[_Heading], body_start: int) -> list[_Span]:
    """Every References/Bibliography section whose body is a bibliography, to its next heading.

    A following section that is still a bibliography under a stray heading (parser artefact), and not an
    appendix or checklist heading, is swallowed too.
    """
    spans = []
    i = 0
    while i < len(headings):
        h = headings[i]
        if h.line < body_start or not _REFERENCES_RE.match(h.text.strip("*_ ")):
            i += 1
            continue
        end_index = i
        if not _looks_like_bibliography(lines, h.line + 1, _section_end(headings, i, len(lines))):
            i += 1
            continue
        while end_index + 1 < len(headings) and _is_stray_bibliography(lines, headings, end_index + 1):
            end_index += 1
        spans.append(_Span(h.line, _section_end(headings, end_index, len(lines)), "references"))
        i = end_index + 1
    return spans


def _is_stray_bibliography(lines: Sequence[str], headings: Sequence[_Heading], index: int) -> bool:
    text = headings[index].text
    if _is_back_matter_boundary(text):
        return False
    start, end = headings[index].line + 1, _section_end(headings, index, len(lines))
    return _looks_like_bibliography(lines, start, end)


def _is_back_matter_boundary(text: str) -> bool:
    """Headings that open something other than more bibliography: appendix, checklist, acknowledgments."""
    return bool(
        _APPENDIX_HEADING_RE.match(text)
        or _LETTER_SECTION_RE.match(text)
        or _CHECKLIST_HEADING_RE.match(text)
        or _CHECKLIST_ITEM_RE.match(text)
        or _ACK_HEADING_RE.match(text)
        or _REFERENCES_RE.match(text)
    )


def _checklist_start(lines: Sequence[str], body_start: int) -> int | None:
    """The checklist's heading line or, when the heading is missing (3FBByWp6GL, 8FN25PlktS,
    F20AfNqMq9), its first item "1. Claims" followed shortly by "Question:"/"Answer:"."""
    for i in range(body_start, len(lines)):
        if _CHECKLIST_HEADING_RE.match(lines[i].strip()):
            return i
    for i in range(body_start, len(lines)):
        if _CHECKLIST_FIRST_ITEM_RE.match(lines[i].strip()) and any(
            _CHECKLIST_QA_RE.match(lines[k].strip()) for k in range(i + 1, min(len(lines), i + 40))
        ):
            return i
    return None


def _checklist_spans(lines: Sequence[str], headings: Sequence[_Heading], body_start: int) -> list[_Span]:
    """From the checklist's start to the end of its last item.

    The last item is the last checklist-like heading (numbered item, Answer/Justification/Guidelines)
    reachable from the start through gaps under `_CHECKLIST_MAX_GAP_CHARS` and before any appendix
    heading; the checklist ends at the next heading after it, which is the appendix in 185 of the 400
    papers, or at the end of the text. Appendices have their own "Question :" / "Answer:" headings
    (prompt examples in BeXcXrXetA), hence the stop at the first appendix heading.
    """
    start = _checklist_start(lines, body_start)
    if start is None:
        return []
    offsets = _line_offsets(lines)
    last = start
    for h in headings:
        if h.line <= start:
            continue
        if offsets[h.line] - offsets[last] > _CHECKLIST_MAX_GAP_CHARS or _opens_appendix(h.text):
            break
        if _CHECKLIST_ITEM_RE.match(h.text) or _CHECKLIST_PART_RE.match(h.text):
            last = h.line
    end = next((h.line for h in headings if h.line > last), len(lines))
    return [_Span(start, end, "checklist")]


def _opens_appendix(text: str) -> bool:
    """ "A Proofs", "Appendix", "Supplementary Material", "B.2 Details": never part of a checklist."""
    return bool(_APPENDIX_HEADING_RE.match(text) or _LETTER_SECTION_RE.match(text))


def _line_offsets(lines: Sequence[str]) -> list[int]:
    offsets, total = [], 0
    for line in lines:
        offsets.append(total)
        total += len(line) + 1
    return offsets


def _acknowledgment_spans(lines: Sequence[str], headings: Sequence[_Heading], body_start: int) -> list[_Span]:
    """Acknowledgment/funding sections (to the next heading) and "Acknowledgments. We thank ..." paragraphs
    (the run-in form of 2YxtR50mho, 7NEP4jGKwA and ~20 others)."""
    spans = [
        _Span(h.line, _section_end(headings, i, len(lines)), "acknowledgments")
        for i, h in enumerate(headings)
        if h.line >= body_start and _ACK_HEADING_RE.match(h.text.strip("*_ "))
    ]
    for block in _paragraphs(lines, body_start, len(lines)):
        if _ACK_PARAGRAPH_RE.match(lines[block[0]].strip()):
            spans.append(_Span(block[0], block[1], "acknowledgments"))
    return spans


def _appendix_spans(
    lines: Sequence[str], headings: Sequence[_Heading], spans: Sequence[_Span], body_start: int
) -> list[_Span]:
    """Everything after the bibliography that is not already dropped, from the first explicit appendix
    heading on, or, in a paper without a bibliography, from an "Appendix"/"A ..." heading followed by a
    "B ..." one. NeurIPS puts nothing but the checklist and appendices after the references."""
    refs = [s for s in spans if s.label == "references"]
    candidates = [h for h in headings if h.line >= body_start and not _inside(h.line, spans)]
    if refs:
        after = [h for h in candidates if h.line >= refs[0].end]
        explicit = [h for h in candidates if h.line < refs[0].start and _APPENDIX_HEADING_RE.match(h.text)]
        start_heading = explicit[0] if explicit else (after[0] if after else None)
    else:
        start_heading = _appendix_without_references(candidates)
    if start_heading is None:
        return []
    return [_Span(start_heading.line, len(lines), "appendix")]


def _appendix_without_references(candidates: Sequence[_Heading]) -> _Heading | None:
    letters = [(h, m.group(1)) for h in candidates if (m := _LETTER_SECTION_RE.match(h.text))]
    for h in candidates:
        if _APPENDIX_HEADING_RE.match(h.text):
            return h
    for k, (h, letter) in enumerate(letters):
        if letter == "A" and any(other == "B" for _, other in letters[k + 1 :]):
            return h
    return None


def _inside(line: int, spans: Sequence[_Span]) -> bool:
    return any(s.start <= line < s.end for s in spans)


def _drop_spans(lines: Sequence[str], spans: Sequence[_Span]) -> str:
    drop = bytearray(len(lines))
    for s in spans:
        drop[s.start : s.end] = b"\x01" * (s.end - s.start)
    return "\n".join(line for line, d in zip(lines, drop, strict=True) if not d)


def _removed_labels(spans: Sequence[_Span]) -> list[str]:
    """Distinct labels in document order; the title line is re-emitted, so it is not 'removed'."""
    labels: list[str] = []
    for s in sorted(spans, key=lambda s: s.start):
        if s.label != "title line" and s.label not in labels:
            labels.append(s.label)
    return labels


# -- file bytes → text ---------------------------------------------------------------------------------
def pdf_supported() -> bool:
    try:
        import pypdf  # noqa: F401
    except ImportError:
        return False
    return True


def decode_paper(key: str, data: bytes) -> str:
    """Paper bytes → text; raises InvalidArgument with the reason the paper cannot be used."""
    if key.lower().endswith(".pdf"):
        return _pdf_text(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"not UTF-8 text (invalid byte at offset {exc.start}); convert it to UTF-8"
        ) from None
    if not text.strip():
        raise InvalidArgument("empty paper text")
    return text.removeprefix("\ufeff")


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        pages = [page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages]
    except (PdfReadError, ValueError, KeyError) as exc:
        raise InvalidArgument(f"unreadable PDF: {exc}") from None
    text = "\n\n".join(pages)
    if not text.strip():
        raise InvalidArgument("PDF holds no extractable text (a scan?); provide a text or Markdown version")
    return text
