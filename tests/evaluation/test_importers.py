"""The importer of the ICLR 2022 LLM reviews (AI-Scientist's benchmark CSVs): every row of the real files,
and each way a row or a file can be malformed."""

from __future__ import annotations

import csv
import io
import statistics
import tokenize
from pathlib import Path

import pytest

from reviewstack.common.errors import InvalidArgument
from reviewstack.evaluation.importers import COLUMN_ASPECTS, import_llm_reviews_csv, lineage_from_filename

# Per file: total points (= string literals in the three list columns of all 500 rows, counted below by
# Python's tokenizer, independently of the importer) and the mean points per review.
REAL_FILES = {
    "claude-3-5-sonnet-20240620_temp_0_1_reflect_5_ensemble_5_pages_all.csv": (7058, 14.12),
    "gpt-4o-2024-05-13_temp_0_1_fewshot_1_reflect_5_ensemble_5_pages_all.csv": (9019, 18.04),
    "gpt-4o-2024-05-13_temp_0_1_pages_all.csv": (5007, 10.01),
    "gpt-4o-2024-05-13_temp_0_1_reflect_5_ensemble_5_pages_all.csv": (10106, 20.21),
    "gpt-4o-2024-05-13_temp_0_1_reflect_5_pages_all.csv": (5227, 10.45),
    "gpt-4o-mini-2024-07-18_temp_0_1_fewshot_1_reflect_5_ensemble_5_pages_all.csv": (4699, 9.40),
}
HEADER = ["paper_id", "Summary", "Strengths", "Weaknesses", "Questions", "Decision", "Overall"]


def _string_literals(cell: str) -> int:
    """How many string literals a list cell holds, by tokenizing it (no evaluation at all)."""
    tokens = tokenize.generate_tokens(io.StringIO(cell).readline)
    return sum(1 for t in tokens if t.type == tokenize.STRING)


@pytest.mark.parametrize("filename", sorted(REAL_FILES))
def test_every_row_of_the_real_csvs(shared_archive, filename: str) -> None:
    path = shared_archive("iclr2022-llm-reviews") / "llm_reviews" / filename
    with open(path, newline="", encoding="utf-8") as f:
        raw = {row["paper_id"]: row for row in csv.DictReader(f)}

    system = import_llm_reviews_csv(path.read_bytes(), str(path))

    assert len(raw) == 500 and system.lineage["rows"] == 500
    assert len(system.reviews) + len(system.exclusions) == 500  # each row accounted for
    assert system.exclusions == []  # the real files are clean in the three list columns
    assert system.papers == set(raw)
    for paper_id, (review,) in system.reviews.items():
        assert review.points and review.paper_id == paper_id
        assert review.aspects == ("acceptance", "rejection", "suggestions")
        for column, aspect in COLUMN_ASPECTS.items():
            ours = [p for p in review.points if p.aspect == aspect]
            assert len(ours) == _string_literals(raw[paper_id][column]), (paper_id, column)
        assert review.lineage["decision"] == raw[paper_id]["Decision"]
    counts = [len(r[0].points) for r in system.reviews.values()]
    total, mean = REAL_FILES[filename]
    assert sum(counts) == total
    assert statistics.mean(counts) == pytest.approx(mean, abs=0.005)
    assert system.kind == "imported" and system.name == filename.removesuffix(".csv")


def test_spot_checks_against_the_raw_files(shared_archive) -> None:
    """Counted by eye in the files: the last row of two of them, the first of Claude's."""
    folder = shared_archive("iclr2022-llm-reviews") / "llm_reviews"

    def counts(filename: str, paper_id: str) -> list[int]:
        path = folder / filename
        (review,) = import_llm_reviews_csv(path.read_bytes(), str(path)).reviews[paper_id]
        return [sum(p.aspect == a for p in review.points) for a in COLUMN_ASPECTS.values()]

    assert counts("gpt-4o-2024-05-13_temp_0_1_pages_all.csv", "fJIrkNKGBNI") == [4, 3, 2]
    mini = "gpt-4o-mini-2024-07-18_temp_0_1_fewshot_1_reflect_5_ensemble_5_pages_all.csv"
    assert counts(mini, "fJIrkNKGBNI") == [3, 3, 3]
    claude = "claude-3-5-sonnet-20240620_temp_0_1_reflect_5_ensemble_5_pages_all.csv"
    path = folder / claude
    (review,) = import_llm_reviews_csv(path.read_bytes(), str(path)).reviews["tDirSp3pczB"]
    strengths = [p.text for p in review.points if p.aspect == "acceptance"]
    questions = [p.text for p in review.points if p.aspect == "suggestions"]
    assert len(strengths) == 5 and len(questions) == 4
    assert strengths[0] == "Novel and sharp theoretical bounds that are tighter than existing work"
    assert questions[-1] == (
        "Have you considered validating the results on other domains beyond vision and language?"
    )


def test_lineage_from_the_file_names() -> None:
    plain = lineage_from_filename("gpt-4o-2024-05-13_temp_0_1_pages_all.csv")
    assert plain == {"model": "gpt-4o-2024-05-13", "temperature": 0.1, "pages": "all", "prompting": "plain"}
    full = lineage_from_filename(
        "gpt-4o-mini-2024-07-18_temp_0_1_fewshot_1_reflect_5_ensemble_5_pages_all.csv"
    )
    assert full["model"] == "gpt-4o-mini-2024-07-18"
    assert (full["few_shot"], full["reflections"], full["ensemble"]) == (1, 5, 5)
    assert full["prompting"] == "fewshot_1+reflect_5+ensemble_5"
    other = lineage_from_filename("my_reviews.csv")
    assert other["model"] == "unknown" and "my_reviews.csv" in other["note"]


def _csv(rows: list[list[str]], header: list[str] = HEADER) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def _row(
    paper_id: str, strengths: str = "['Clear.']", weaknesses: str = "['Small.']", questions: str = "[]"
) -> list[str]:
    return [paper_id, "A summary.", strengths, weaknesses, questions, "Reject", "4"]


def test_malformed_rows_are_excluded_with_row_and_reason() -> None:
    data = _csv(
        [
            _row("good1", questions="['Why?', '  ', \"What's next?\"]"),
            _row("badsyntax", strengths="['unterminated"),
            _row("code", strengths="__import__('os').system('touch /tmp/pwned')"),
            _row("notalist", weaknesses="{'a': 1}"),
            _row("nonstring", questions="['ok', 3]"),
            _row(""),
            _row("good1"),
            _row("empty", strengths="[]", weaknesses="[]", questions=""),
            ["short", "only two fields"],
            _row("good2", strengths="", questions="('As a tuple?',)"),
        ]
    )
    system = import_llm_reviews_csv(data, "imports/llm.csv", name="llm")

    assert system.name == "llm" and sorted(system.papers) == ["good1", "good2"]
    reasons = {e.what: e.reason for e in system.exclusions}
    assert len(system.exclusions) == 8  # 10 rows: 2 imported + 8 excluded
    assert "not a Python list literal" in reasons["llm.csv row 2 (line 3)"]
    assert "not a Python list literal" in reasons["llm.csv row 3 (line 4)"]  # never evaluated
    assert not Path("/tmp/pwned").exists()
    assert "is a dict, not a list of points" in reasons["llm.csv row 4 (line 5)"]
    assert "holds a int" in reasons["llm.csv row 5 (line 6)"]
    assert "paper_id is empty" in reasons["llm.csv row 6 (line 7)"]
    assert "already imported from row 1" in reasons["llm.csv row 7 (line 8)"]
    assert "empty review" in reasons["llm.csv row 8 (line 9)"]
    assert "has 2 fields, the header 7" in reasons["llm.csv row 9 (line 10)"]
    assert {e.paper_id for e in system.exclusions} >= {"badsyntax", "code", "empty", "short"}

    (good1,) = system.reviews["good1"]
    assert [p.text for p in good1.points] == [
        "Clear.",
        "Small.",
        "Why?",
        "What's next?",
    ]  # blank item dropped
    assert good1.empty_aspects == () and good1.lineage == {"row": 1, "decision": "Reject", "overall": "4"}
    (good2,) = system.reviews["good2"]
    assert good2.empty_aspects == ("acceptance",)  # a blank cell: the model gave no strengths
    assert [p.aspect for p in good2.points] == ["rejection", "suggestions"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"paper_id,Strengths\nx,['a']\n", "lacks the columns Weaknesses, Questions"),
        (b"\xff\xfe not utf-8", "not UTF-8"),
        (_csv([_row("x", strengths="[", weaknesses="[]", questions="[]")]), "holds no usable review"),
        (_csv([]), "no data rows"),
        (
            b'paper_id,Strengths,Weaknesses,Questions\nx,"[' + b"'a'," * 50_000 + b']",[],[]\n',
            "not a readable CSV",
        ),
    ],
)
def test_bad_files_are_errors(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        import_llm_reviews_csv(data, "bad.csv")
