"""Dataset builds through the library: what a dataset holds, and every bad input of the issue."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from reviewstack.common.aspects import EMPTY_ASPECT, AspectSchema
from reviewstack.common.errors import Cancelled, FailedPrecondition, InvalidArgument, NotFound
from reviewstack.common.review_format import parse
from reviewstack.common.store import open_store
from reviewstack.common.tokenizer import load_tokenizer
from reviewstack.dataprep.build import DatasetBuild, build_dataset
from reviewstack.dataprep.config import BuildConfig

from .conftest import copy_papers, sample_ids


def _records(result) -> list[dict]:
    store = open_store(result.uri)
    rows = []
    for split in ("train", "val", "test"):
        rows += [json.loads(line) for line in store.get_bytes(f"{split}.jsonl").decode().splitlines()]
    return rows


def test_sample_build_publishes_a_complete_dataset(sample_build):
    manifest = sample_build.manifest
    assert manifest["counts"]["records"] == 30 and manifest["skipped"] == []
    assert manifest["counts"]["train"] + manifest["counts"]["val"] + manifest["counts"]["test"] == 30
    assert min(manifest["counts"][s] for s in ("val", "test")) >= 2
    assert manifest["paper_versions"] == {"late": 22, "early": 8}
    assert manifest["prompt_version"] == "reviewer-v1"
    assert manifest["tokenizer"]["name"] == "llama-3" and manifest["distiller"]["name"] == "embedded"
    assert len(manifest["inputs"]) == 60
    assert manifest["tokens"]["prompt"]["max"] <= 11_138
    assert manifest["tokens"]["response"]["max"] <= 1_150
    assert 0 <= manifest["targets"]["empty_aspect_share"] < 0.5
    assert set(manifest["files"]) == {"train.jsonl", "val.jsonl", "test.jsonl", "ground_truth.jsonl"}


def test_manifest_hashes_match_the_files(sample_build):
    store = open_store(sample_build.uri)
    for name, entry in sample_build.manifest["files"].items():
        data = store.get_bytes(name)
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["size"]


def test_every_record_has_seven_aspects_and_fits_the_limits(sample_build):
    tokenizer = load_tokenizer()
    records = _records(sample_build)
    assert len({r["paper_id"] for r in records}) == 30
    for record in records:
        assert list(record["aspects"]) == list(AspectSchema.SEVEN.keys)
        assert all(items for items in record["aspects"].values())  # empty = [EMPTY_ASPECT], never []
        assert parse(record["response"]).aspects == record["aspects"]  # response is the rendered aspects
        assert record["prompt_tokens"] == tokenizer.count(record["prompt"]) <= 11_138
        assert record["response_tokens"] == tokenizer.count(record["response"]) <= 1_150
        assert record["messages"][0]["role"] == "system" and record["messages"][1]["role"] == "user"
        assert record["truncated"] == (
            record["truncation"]["paper_tokens_kept"] < record["truncation"]["paper_tokens"]
            or record["truncation"]["response_items_dropped"] > 0
            or record["truncation"]["response_items_shortened"] > 0
        )
    assert any(r["truncated"] for r in records)  # NeurIPS papers run past 11k tokens
    assert any(EMPTY_ASPECT not in items for r in records for items in r["aspects"].values())


def test_splits_are_by_paper_and_ground_truth_covers_every_paper(sample_build):
    store = open_store(sample_build.uri)
    truth = [json.loads(x) for x in store.get_bytes("ground_truth.jsonl").decode().splitlines()]
    records = {r["paper_id"]: r["split"] for r in _records(sample_build)}
    assert {t["paper_id"]: t["split"] for t in truth} == records
    for paper in truth:
        reviewers = {r["reviewer_id"] for r in paper["reviewers"]}
        assert len(reviewers) >= 2 and {p["reviewer_id"] for p in paper["points"]} <= reviewers
        kinds = {p["kind"] for p in paper["points"]}
        assert {"strength", "weakness"} <= kinds
        assert all(p["text"].strip() and p["section"] for p in paper["points"])


def test_identical_rebuild_finds_the_first_build(sample_build, sample_config):
    again = build_dataset(sample_config)
    assert again.reused and again.version == sample_build.version


def test_explicit_version_is_not_overwritten_silently(tmp_path):
    source = copy_papers(tmp_path / "src", sample_ids()[:3])
    config = BuildConfig(
        sources=[str(source)], output=str(tmp_path / "out"), name="x", paper_version="late", version="v1"
    )
    build_dataset(config)
    with pytest.raises(Exception, match="--overwrite"):
        build_dataset(config)
    replaced = build_dataset(
        config.model_copy(update={"overwrite": True, "aspect_schema": AspectSchema.FOUR})
    )
    assert replaced.manifest["aspect_schema"] == "4"
    record = json.loads(open_store(replaced.uri).get_bytes("train.jsonl").decode().splitlines()[0])
    assert list(record["aspects"]) == ["significance", "acceptance", "rejection", "suggestions"]


def _bad_source(root: Path, good: list[str]) -> Path:
    source = copy_papers(root, good)
    papers, reviews = root / "papers", root / "reviews"
    valid = json.loads((reviews / f"{good[0]}.json").read_text())
    (reviews / "malformed.json").write_text('{"id": "malformed", "reviews": [')
    (papers / "malformed.md").write_text("# A paper\n\nText.")
    (papers / "orphan.md").write_text("# A paper nobody reviewed\n\nText.")
    (reviews / "lonely.json").write_text(json.dumps({**valid, "id": "lonely"}))
    (papers / "empty.md").write_text("  \n")
    (reviews / "empty.json").write_text(json.dumps({**valid, "id": "empty"}))
    (papers / "latin1.md").write_bytes("# Caf\xe9 na\xefve\n\nR\xe9sum\xe9.".encode("latin-1"))
    (reviews / "latin1.json").write_text(json.dumps({**valid, "id": "latin1"}))
    sectionless = {"IS_META_REVIEW": False, "comments": "Nice paper. I liked it a lot and vote accept."}
    (papers / "nosections.md").write_text((papers / f"{good[1]}.md").read_text())
    (reviews / "nosections.json").write_text(
        json.dumps({**valid, "id": "nosections", "reviews": [sectionless]})
    )
    mixed = {**valid, "id": "mixed", "reviews": [sectionless, *valid["reviews"]]}
    (papers / "mixed.md").write_text((papers / f"{good[2]}.md").read_text())
    (reviews / "mixed.json").write_text(json.dumps(mixed))
    (papers / "notes.docx").write_bytes(b"PK\x03\x04")
    return source


def test_every_bad_input_is_reported_with_file_and_reason(tmp_path):
    good = sample_ids()[:3]
    first = _bad_source(tmp_path / "a", good)
    second = copy_papers(tmp_path / "b", [good[0]])  # the same id in a second source
    config = BuildConfig(
        sources=[str(first), str(second)], output=str(tmp_path / "out"), name="bad", paper_version="late"
    )
    result = build_dataset(config)
    reasons = {(s["paper_id"], s["path"]): s["reason"] for s in result.manifest["skipped"]}

    def reason(paper_id: str, path: str) -> str:
        assert (paper_id, path) in reasons, f"{paper_id} {path} not reported: {reasons}"
        return reasons[(paper_id, path)]

    assert "malformed review file" in reason("malformed", "reviews/malformed.json")
    assert "line 1" in reason("malformed", "reviews/malformed.json")
    assert reason("orphan", "papers/orphan.md") == "paper without reviews"
    assert reason("lonely", "reviews/lonely.json") == "review without a paper"
    assert reason("empty", "papers/empty.md") == "empty paper text"
    assert "not UTF-8" in reason("latin1", "papers/latin1.md")
    assert "no recognisable section" in reason("nosections", "reviews/nosections.json")
    assert "paper without reviews" in reason("nosections", "papers/nosections.md")
    assert "R1 has no recognisable section" in reason("mixed", "reviews/mixed.json")
    assert "duplicate paper id" in reason(good[0], f"papers/{good[0]}.md")
    assert "unsupported" in reasons[("", "papers/notes.docx")]
    built = {r["paper_id"] for r in _records(result)}
    assert built == {*good, "mixed"}
    mixed = next(r for r in _records(result) if r["paper_id"] == "mixed")
    assert mixed["paper_id"] == "mixed"
    # nothing dropped silently: every paper id seen is either built or reported
    seen = {p.stem for p in (first / "papers").iterdir()} | {p.stem for p in (first / "reviews").iterdir()}
    assert seen <= built | {pid for pid, _ in reasons} | {"notes"}


def test_missing_source_fails_before_any_work(tmp_path):
    out = tmp_path / "out"
    config = BuildConfig(sources=[str(tmp_path / "nowhere")], output=str(out), name="x", paper_version="late")
    with pytest.raises(NotFound, match="nowhere"):
        build_dataset(config)
    assert not out.exists() or not any(out.rglob("*.jsonl"))


def test_source_without_papers_or_reviews_is_refused(tmp_path):
    (tmp_path / "src" / "other").mkdir(parents=True)
    config = BuildConfig(
        sources=[str(tmp_path / "src")], output=str(tmp_path / "out"), name="x", paper_version="late"
    )
    with pytest.raises(InvalidArgument, match="papers/"):
        build_dataset(config)


def test_unwritable_output_fails_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = BuildConfig(
        sources=[str(copy_papers(tmp_path / "src", sample_ids()[:1]))],
        output=str(blocker / "store"),
        name="x",
        paper_version="late",
    )
    build = DatasetBuild(config)
    with pytest.raises(FailedPrecondition):
        build.preflight()


def test_a_cancelled_build_publishes_nothing(tmp_path):
    class CancelWhileWriting:
        def update(self, stage: str, done: int = 0, total: int = 0, message: str = "") -> None:
            self.stage = stage

        def check_cancelled(self) -> None:
            if getattr(self, "stage", "") == "tokenizing":
                raise Cancelled("cancelled by the test")

    config = BuildConfig(
        sources=[str(copy_papers(tmp_path / "src", sample_ids()[:3]))],
        output=str(tmp_path / "out"),
        name="x",
        paper_version="late",
    )
    with pytest.raises(Cancelled):
        DatasetBuild(config, progress=CancelWhileWriting()).run()
    assert open_store(str(tmp_path / "out")).list_published("datasets") == []


def test_no_usable_paper_is_an_error_naming_the_reasons(tmp_path):
    (tmp_path / "src" / "papers").mkdir(parents=True)
    (tmp_path / "src" / "papers" / "a.md").write_text("text")
    config = BuildConfig(
        sources=[str(tmp_path / "src")], output=str(tmp_path / "out"), name="x", paper_version="late"
    )
    with pytest.raises(InvalidArgument, match="paper without reviews"):
        build_dataset(config)


def test_response_budget_below_the_structure_fails_in_preflight(tmp_path):
    config = BuildConfig(
        sources=[str(copy_papers(tmp_path / "src", sample_ids()[:1]))],
        output=str(tmp_path / "out"),
        name="x",
        paper_version="late",
        max_response_length=100,
    )
    with pytest.raises(InvalidArgument, match="use at least"):
        DatasetBuild(config).preflight()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("name", "Bad Name", "lower-case"),
        ("split", (0.5, 0.5, 0.5), "sum to 1"),
        ("distiller", "llm", "llm_endpoint"),
        ("paper_version", "sometimes", "paper_version"),
    ],
)
def test_bad_build_settings_are_refused(field, value, message):
    fields = {"sources": ["x"], "output": "y", "name": "n", "paper_version": "late", field: value}
    with pytest.raises(Exception, match=message):
        BuildConfig(**fields)
