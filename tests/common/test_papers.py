"""Paper cleaning on real papers of the bundled sample and on synthetic edge cases."""

from __future__ import annotations

import html
import re
from functools import cache
from pathlib import Path

import pytest

from reviewstack.common.papers import CleanedPaper, clean_paper

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "neurips2025-sample"
SAMPLE_IDS = sorted(p.stem for p in (SAMPLE / "papers").glob("*.md"))
HEADING = re.compile(r"^#{1,6} +(.*)$", re.MULTILINE)


def raw_paper(paper_id: str) -> str:
    return (SAMPLE / "papers" / f"{paper_id}.md").read_text(encoding="utf-8")


def is_subsequence(needles: list[str], haystack: list[str]) -> bool:
    remaining = iter(haystack)
    return all(any(n == h for h in remaining) for n in needles)


@cache
def cleaned(paper_id: str, drop_appendix: bool = False) -> CleanedPaper:
    return clean_paper(raw_paper(paper_id), drop_appendix=drop_appendix)


# --- real papers ---------------------------------------------------------------------------------------

GEOCAD = "0yowBBK6tT"  # camera-ready; acknowledgement, references, checklist, then the appendix
GEOCAD_TITLE = "GeoCAD: Local Geometry-Controllable CAD Generation with Large Language Models"
GEOCAD_ABSTRACT_START = (
    "Local geometry-controllable computer-aided design (CAD) generation aims to modify local parts of CAD "
    "models automatically, enhancing design efficiency."
)


def test_geocad_keeps_title_first_and_abstract() -> None:
    paper = cleaned(GEOCAD)
    assert paper.title == GEOCAD_TITLE
    assert paper.text.startswith(f"## {GEOCAD_TITLE}\n\n")
    assert GEOCAD_ABSTRACT_START in paper.text
    assert paper.text.index("## Abstract") < paper.text.index("## 1 Introduction")


def test_geocad_author_block_gone_teaser_caption_kept() -> None:
    paper, raw = cleaned(GEOCAD), raw_paper(GEOCAD)
    assert "Zhanwei Zhang" in raw and "zhanweizhang@zju.edu.cn" in raw
    assert "Zhanwei Zhang" not in paper.text
    assert "zhanweizhang@zju.edu.cn" not in paper.text
    assert "Zhejiang University" not in paper.text.split("## Abstract")[0]
    caption = "Figure 1: Local geometry-controllable CAD generation achieved by GeoCAD."
    assert caption in paper.text
    assert paper.text.index(caption) < paper.text.index("## Abstract")


def test_geocad_back_matter_removed_body_and_appendix_kept() -> None:
    paper = cleaned(GEOCAD)
    text = paper.text
    # The acknowledgement sits between the conclusion and the references; both go, the conclusion stays.
    assert "## 5 Conclusion" in text
    assert "## Acknowledgement" not in text and "Yongjiang Talent Introduction Programme" not in text
    assert "## References" not in text
    # The checklist comes *before* the appendix here: the checklist goes, the appendix stays whole.
    for checklist_text in ("NeurIPS Paper Checklist", "## 1. Claims", "Answer: [Yes]", "Guidelines:"):
        assert checklist_text not in text
    assert "## Appendix" in text and "## K Additional Qualitative Results" in text
    assert text.index("## 5 Conclusion") < text.index("## Appendix") < text.index("## A More Details")
    assert paper.removed == [
        "author block",
        "acknowledgments",
        "references",
        "checklist",
        "image placeholders",
    ]


def test_geocad_entities_and_placeholders() -> None:
    raw, text = raw_paper(GEOCAD), cleaned(GEOCAD).text
    assert "&amp;" in raw and "<!-- image -->" in raw
    assert "&amp;" not in text and "<!-- image -->" not in text
    assert "\n\n\n" not in text


def test_geocad_drop_appendix() -> None:
    kept, dropped = cleaned(GEOCAD), cleaned(GEOCAD, True)
    assert "appendix" in dropped.removed and "appendix" not in kept.removed
    assert "## Appendix" not in dropped.text and "## A More Details" not in dropped.text
    assert "## 5 Conclusion" in dropped.text and GEOCAD_ABSTRACT_START in dropped.text
    assert len(dropped.text) < len(kept.text)


def test_text_before_references_is_kept() -> None:
    """In 1EnpXg8s4v the references follow the conclusion directly: its last sentence must survive."""
    raw = raw_paper("1EnpXg8s4v")
    before = raw[: raw.index("## References")].rstrip().split("\n")[-1]
    last_sentence = before.split(". ")[-1].strip()
    assert len(last_sentence.split()) > 5
    text = cleaned("1EnpXg8s4v").text
    assert last_sentence in text
    first_reference = raw[raw.index("## References") :].split("\n")[2]
    assert first_reference.startswith("- [1]") and first_reference not in text


def test_anonymous_submission_with_line_numbers() -> None:
    """2lgVQRB4dh is a rejected (early) version: line-number runs before the title, anonymous authors."""
    raw, paper = raw_paper("2lgVQRB4dh"), cleaned("2lgVQRB4dh")
    assert raw.startswith("22\n") and "Anonymous Author(s)" in raw
    assert paper.title.startswith("Generalized Neighborhood Attention: Multi-dimensional Sparse Attention")
    assert paper.text.startswith("## Generalized Neighborhood Attention")
    assert "Anonymous Author(s)" not in paper.text
    assert not re.search(r"^\d{1,4}\n\n\d{1,4}\n\n\d{1,4}$", paper.text, re.MULTILINE)
    assert {"front-matter debris", "author block", "line numbers"} <= set(paper.removed)


def test_author_names_written_as_headings() -> None:
    """YX5DHa9OfX writes all authors in one `## ` heading right after the title heading."""
    raw, paper = raw_paper("YX5DHa9OfX"), cleaned("YX5DHa9OfX")
    assert "## Ali Farajzadeh, Danyal Saeed" in raw
    assert paper.title == "Imitation Beyond Expectation Using Pluralistic Stochastic Dominance"
    assert "Farajzadeh" not in paper.text.split("## Abstract")[0]
    assert "bziebart" not in paper.text


def test_run_in_acknowledgment_paragraph() -> None:
    """7NEP4jGKwA has no acknowledgment heading: "Acknowledgments. This work was supported by ..."."""
    assert "Acknowledgments. This work was supported by the Junior Star GACR" in raw_paper("7NEP4jGKwA")
    paper = cleaned("7NEP4jGKwA")
    assert "Junior Star GACR" not in paper.text
    assert "acknowledgments" in paper.removed


@pytest.mark.parametrize("paper_id", SAMPLE_IDS)
def test_every_sample_paper(paper_id: str) -> None:
    raw, paper = raw_paper(paper_id), cleaned(paper_id)
    assert paper.title and paper.text.startswith(f"## {paper.title}\n")
    assert {"author block", "references", "checklist"} <= set(paper.removed)
    assert not re.search(r"^#+ (?:References|NeurIPS Paper Checklist)\s*$", paper.text, re.MULTILINE)
    assert "Justification:" not in paper.text
    assert 0.1 < 1 - len(paper.text) / len(raw) < 0.8
    # Section structure: every heading between the Abstract and the references survives, in order.
    body = raw[raw.index("## Abstract") : raw.index("## References")]
    expected = [
        html.unescape(h) for h in HEADING.findall(body) if not re.match(r"(?i)(\d+ )?acknowledge?ments?", h)
    ]
    assert len(expected) >= 5
    assert is_subsequence(expected, HEADING.findall(paper.text))


@pytest.mark.parametrize("paper_id", ["0yowBBK6tT", "2lgVQRB4dh", "L3aEdxJMHl"])
def test_cleaning_is_idempotent(paper_id: str) -> None:
    once = cleaned(paper_id)
    twice = clean_paper(once.text)
    assert twice.text == once.text and twice.title == once.title


# --- synthetic edge cases ------------------------------------------------------------------------------

ABSTRACT = (
    "We study the problem of learning sparse representations from noisy data. Our method is simple and it "
    "improves accuracy on three benchmarks by a large margin, which we show with theory and experiments."
)
BIBLIOGRAPHY = (
    "- [1] A. Author. A paper about things. In NeurIPS, 2020.\n"
    "- [2] B. Author. Another paper. arXiv:2101.00001, 2021.\n"
)
CHECKLIST = (
    "## 1. Claims\n\nQuestion: Do the main claims reflect the contributions?\n\nAnswer: [Yes]\n\n"
    "Justification: See the abstract.\n\nGuidelines:\n\n- The answer NA means that ...\n\n"
    "## 2. Limitations\n\nQuestion: Does the paper discuss limitations?\n\nAnswer: [Yes]\n\n"
)


def test_no_abstract_heading_authors_dropped_abstract_kept() -> None:
    doc = (
        "## Sparse Things Are Good\n\nJane Doe 1 John Smith 2\n\n"
        "1 University of Somewhere 2 Institute of Elsewhere\n\njane@somewhere.edu\n\n"
        f"{ABSTRACT}\n\n## 1 Introduction\n\nBody.\n"
    )
    paper = clean_paper(doc)
    assert paper.title == "Sparse Things Are Good"
    assert paper.removed == ["author block"]
    assert "Jane Doe" not in paper.text and "jane@somewhere.edu" not in paper.text
    assert paper.text == f"## Sparse Things Are Good\n\n{ABSTRACT}\n\n## 1 Introduction\n\nBody.\n"


def test_no_abstract_heading_and_no_author_evidence_keeps_everything() -> None:
    doc = f"## A Title\n\nA short opening line\n\n{ABSTRACT}\n\n## 1 Introduction\n\nBody.\n"
    paper = clean_paper(doc)
    assert paper.removed == []
    assert paper.text == doc


def test_no_references_nothing_after_the_body_is_lost() -> None:
    doc = f"## T\n\n## Abstract\n\n{ABSTRACT}\n\n## 1 Method\n\nWe do X.\n\n## 2 Results\n\nIt works.\n"
    paper = clean_paper(doc)
    assert "references" not in paper.removed
    assert paper.text == doc


def test_references_heading_over_non_bibliography_is_kept() -> None:
    """83HlJrZigZ reuses "References" in its appendix for lists of reference captions, without years."""
    captions = "1. A horse walking on a cobblestone street.\n2. Birds sing while a girl jumps on the patio.\n"
    doc = (
        f"## T\n\n## Abstract\n\n{ABSTRACT}\n\n## References\n\n{BIBLIOGRAPHY}\n"
        f"## A Qualitative Examples\n\n## References\n\n{captions}"
    )
    paper = clean_paper(doc)
    assert "A. Author" not in paper.text
    assert "## A Qualitative Examples\n\n## References\n\n" + captions in paper.text


def test_checklist_without_heading_before_appendix() -> None:
    doc = (
        f"## T\n\n## Abstract\n\n{ABSTRACT}\n\n## 5 Conclusion\n\nDone.\n\n## References\n\n{BIBLIOGRAPHY}\n"
        f"{CHECKLIST}## A Proofs\n\nProof of Theorem 1.\n\n## Question :\n\nWhat is 2+2?"
        "\n\n## Answer: [B]\n\n4\n"
    )
    paper = clean_paper(doc)
    assert "checklist" in paper.removed
    assert "Claims" not in paper.text and "Guidelines" not in paper.text
    # The appendix after the checklist stays, including its own "Question :" headings (BeXcXrXetA).
    appendix = "## A Proofs\n\nProof of Theorem 1.\n\n## Question :\n\nWhat is 2+2?\n\n## Answer: [B]\n\n4\n"
    assert paper.text.endswith(appendix)
    dropped = clean_paper(doc, drop_appendix=True)
    assert dropped.text.endswith("## 5 Conclusion\n\nDone.\n")


def test_checklist_heading_to_the_end() -> None:
    doc = f"## T\n\n## Abstract\n\n{ABSTRACT}\n\n## NeurIPS Paper Checklist\n\n{CHECKLIST}"
    paper = clean_paper(doc)
    assert paper.text == f"## T\n\n## Abstract\n\n{ABSTRACT}\n"


@pytest.mark.parametrize(
    "heading",
    ["Acknowledgments", "Acknowledgements", "6 Acknowledgment", "Acknowledgments and Disclosure of Funding"],
)
def test_acknowledgment_heading_variants(heading: str) -> None:
    doc = f"## T\n\n## Abstract\n\n{ABSTRACT}\n\n## {heading}\n\nWe thank the NSF.\n\n## 7 Next\n\nMore.\n"
    paper = clean_paper(doc)
    assert "NSF" not in paper.text and "## 7 Next\n\nMore." in paper.text
    assert paper.removed == ["acknowledgments"]


def test_tables_math_and_entities() -> None:
    table = "| a &#124; b | x &lt; y |\n|---|---|\n| 1 | 2 |"
    doc = (
        f"## T\n\n## Abstract\n\n{ABSTRACT}\n\n## 1 Body\n\nIf x &lt; y &amp; y &gt; z then $a.b$ holds."
        f"\n\n\n\n\n<!-- image -->\n\n{table}\n\n<!-- formula-not-decoded -->\n"
    )
    text = clean_paper(doc).text
    assert "If x < y & y > z then $a.b$ holds." in text
    # An escaped pipe inside a cell would split the column if unescaped; other entities are unescaped.
    assert "| a &#124; b | x < y |\n|---|---|\n| 1 | 2 |" in text
    assert "<!-- image -->" not in text and "<!-- formula-not-decoded -->" in text
    assert "\n\n\n" not in text


def test_title_wrapped_over_headings_and_title_hint() -> None:
    doc = (
        "## Modality-Aware SAM:\n\n## Sharpness-Aware Minimization Driven Gradient\n\n"
        "## Modulation for Harmonized Learning\n\n## Hossein Rajoli\n\nClemson University h@clemson.edu\n\n"
        f"## Abstract\n\n{ABSTRACT}\n"
    )
    paper = clean_paper(doc)
    assert paper.title == (
        "Modality-Aware SAM: Sharpness-Aware Minimization Driven Gradient Modulation for Harmonized Learning"
    )
    assert "Rajoli" not in paper.text
    untitled = f"Jialong Zhou\n\nKing's College London London, UK\n\n## Abstract\n\n{ABSTRACT}\n"
    hinted = clean_paper(untitled, title_hint="GUARDIAN:  Safeguarding LLM Agents")
    assert hinted.title == "GUARDIAN: Safeguarding LLM Agents"
    assert hinted.text.startswith("## GUARDIAN: Safeguarding LLM Agents\n\n## Abstract\n")
    assert clean_paper(untitled).title == ""


def test_title_candidates_that_look_like_sections() -> None:
    """EXIKFM1Q9R's title starts with "Abstract"; a paper whose first heading is "1 Introduction" has no
    title heading at all."""
    titled = clean_paper(f"## Abstract Rendering: Certified Rendering\n\n## Abstract\n\n{ABSTRACT}\n")
    assert titled.title == "Abstract Rendering: Certified Rendering"
    assert titled.text == f"## Abstract Rendering: Certified Rendering\n\n## Abstract\n\n{ABSTRACT}\n"
    untitled = clean_paper("Some text line\n\n## 1 Introduction\n\nBody here.\n")
    assert untitled.title == "" and untitled.removed == []
