"""Reading source folders: text encodings, PDF papers (when pypdf is installed), unusual files."""

from __future__ import annotations

import pytest

from reviewstack.common.errors import InvalidArgument
from reviewstack.common.papers import decode_paper
from reviewstack.dataprep.sources import decode_review, discover, open_source


def tiny_pdf(lines: list[str]) -> bytes:
    """A valid one-page PDF whose text layer holds `lines` (built by hand: no PDF writer needed)."""
    text = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) '" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(text)} >>\nstream\n{text}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def test_pdf_papers_are_read_through_pypdf():
    pytest.importorskip("pypdf")
    text = decode_paper("papers/p.pdf", tiny_pdf(["A Study of Things", "Abstract", "We study things."]))
    assert "A Study of Things" in text and "We study things." in text


def test_broken_pdf_is_an_input_error():
    pytest.importorskip("pypdf")
    with pytest.raises(InvalidArgument, match="PDF"):
        decode_paper("papers/p.pdf", b"%PDF-1.4\nnot really a pdf")


def test_utf8_bom_is_removed_and_non_utf8_is_refused():
    assert decode_paper("papers/p.md", "\ufeff# Title\n\ntext".encode()) == "# Title\n\ntext"
    with pytest.raises(InvalidArgument, match="offset 3"):
        decode_paper("papers/p.md", b"# T\xff")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"[1, 2]", "expected a JSON object"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"id": "x",\n "reviews": [}', "line 2"),
    ],
)
def test_review_files_that_are_not_json_objects(data, message):
    with pytest.raises(InvalidArgument, match=message):
        decode_review(data)


def test_md_wins_over_txt_for_the_same_paper_and_the_other_is_reported(tmp_path):
    (tmp_path / "papers").mkdir()
    (tmp_path / "reviews").mkdir()
    (tmp_path / "papers" / "p1.txt").write_text("plain")
    (tmp_path / "papers" / "p1.md").write_text("# markdown")
    (tmp_path / "reviews" / "p1.json").write_text("{}")
    (tmp_path / "reviews" / "notes.txt").write_text("x")
    inputs, skipped = discover([open_source(str(tmp_path), None)])
    assert [(i.paper_id, i.paper_key) for i in inputs] == [("p1", "papers/p1.md")]
    reasons = {s.path: s.reason for s in skipped}
    assert "another text of the same paper is used: papers/p1.md" in reasons["papers/p1.txt"]
    assert reasons["reviews/notes.txt"] == "review files must be .json"
    assert not (tmp_path / ".reviewstack").exists()  # reading a source never writes into it
