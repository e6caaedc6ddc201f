"""Inputs → Systems: the review service's batch output in a local and an S3 store, folders and CSVs, the
human set of a data-prep dataset (written in data-prep's format, and one real build), and alignment."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from reviewstack.common.aspects import EMPTY_ASPECT, AspectSchema
from reviewstack.common.errors import FailedPrecondition, InvalidArgument, NotFound
from reviewstack.common.review_format import render
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import ArtifactStore, open_store
from reviewstack.evaluation.model import Exclusion, Point, Review, System
from reviewstack.evaluation.sources import align_papers, load_human, load_system
from reviewstack.review.cli import _record
from reviewstack.v1 import common_pb2, review_pb2

from ..dataprep.conftest import copy_papers, sample_ids

CLAUDE = "claude-3-5-sonnet-20240620_temp_0_1_reflect_5_ensemble_5_pages_all.csv"


def record(
    paper_id: str,
    aspects: Mapping[str, Sequence[str]] | None,
    *,
    text: str = "",
    penalty: float = 0.0,
    system: str = "ours",
    schema: AspectSchema = AspectSchema.SEVEN,
    missing: Sequence[str] = (),
) -> bytes:
    """A record exactly as `reviewstack review --batch` writes it (its own `_record`); `aspects=None` is a
    review that was never parsed (no aspects, only text); `missing` aspects were never written."""
    structured = common_pb2.StructuredReview(text=text)
    if aspects is not None:
        for aspect in schema.aspects:
            items = list(aspects.get(aspect.key, ())) or [EMPTY_ASPECT]
            structured.aspects.append(
                common_pb2.Aspect(
                    name=aspect.criterion,
                    items=items,
                    empty=items == [EMPTY_ASPECT],
                    missing=aspect.key in missing,
                )
            )
        structured.text = render(aspects, schema)
    response = review_pb2.ReviewResponse(
        review=structured,
        lineage=review_pb2.ReviewLineage(
            model="reviewer-v1",
            prompt_version="p1",
            parameters=review_pb2.GenerationParameters(max_new_tokens=64, refusal_penalty=penalty),
        ),
        warnings=["paper truncated"],
        prompt_tokens=100,
        generated_tokens=50,
    )
    request = review_pb2.ReviewRequest(
        paper=common_pb2.Paper(
            id=paper_id, file=common_pb2.PaperFile(filename=f"{paper_id}.md", content=b"x")
        )
    )
    return _record(Path(f"{paper_id}.md"), request, response, system).to_json()


def write_batch(store: ArtifactStore, system: str = "ours", penalty: float = 0.5) -> None:
    prefix = f"reviews/{system}"
    store.put_bytes(
        f"{prefix}/p1.json",
        record(
            "p1", {"idea": ["Novel idea.", "Well motivated."], "rejection": ["No ablation."]}, penalty=penalty
        ),
    )
    store.put_bytes(f"{prefix}/p2.json", record("p2", {"experiments": ["Strong results."]}, penalty=penalty))
    store.put_bytes(f"{prefix}/p3.json", record("p3", {}, penalty=penalty))  # every aspect refused


def check_batch(system: System, uri: str) -> None:
    assert system.kind == "generated" and system.name == "ours" and system.uri == uri
    assert system.papers == {"p1", "p2", "p3"} and system.exclusions == []
    (p1,) = system.reviews["p1"]
    assert p1.points == (
        Point("Novel idea.", "idea"),
        Point("Well motivated.", "idea"),
        Point("No ablation.", "rejection"),
    )
    assert p1.aspects == AspectSchema.SEVEN.keys
    assert p1.empty_aspects == ("prior_work", "experiments", "acceptance", "suggestions", "other")
    assert p1.lineage["model"] == "reviewer-v1" and p1.lineage["parameters"]["refusal_penalty"] == 0.5
    assert p1.lineage["record"] == f"{uri}/p1.json" and p1.lineage["aspect_schema"] == "7"
    (p3,) = system.reviews["p3"]
    assert p3.points == () and p3.empty_aspects == AspectSchema.SEVEN.keys  # a refusal, kept
    assert system.lineage["models"] == ["reviewer-v1"] and system.lineage["refusal_penalties"] == [0.5]
    assert system.lineage["records"] == 3 and system.lineage["loaded"] == 3


def test_batch_output_in_a_local_store(local_store: ArtifactStore, tmp_path: Path) -> None:
    write_batch(local_store)
    folder = local_store.uri_for("reviews/ours")
    check_batch(load_system("ours", "reviews/ours", local_store), folder)
    check_batch(load_system("ours", local_store.uri, local_store), folder)  # the store holding reviews/ours
    check_batch(load_system("ours", folder), folder)  # file:// URI, no store
    check_batch(load_system("ours", str(tmp_path / "store" / "reviews" / "ours")), folder)  # a local folder
    settings = StoreSettings(store=str(tmp_path / "store"))
    check_batch(load_system("ours", "reviews/ours/", settings), folder)  # what the evaluation job passes


def test_batch_output_in_an_s3_store(s3_store: ArtifactStore) -> None:
    write_batch(s3_store)
    folder = s3_store.uri_for("reviews/ours")
    assert folder.startswith("s3://")
    check_batch(load_system("ours", "reviews/ours", s3_store), folder)
    check_batch(load_system("ours", folder, s3_store), folder)  # an s3:// URI inside the store
    check_batch(load_system("ours", s3_store.uri, s3_store), folder)


def test_four_aspect_and_unparsed_reviews(local_store: ArtifactStore) -> None:
    four = {"significance": ["Important."], "suggestions": ["Add baselines."]}
    local_store.put_bytes("reviews/x/a.json", record("a", four, schema=AspectSchema.FOUR))
    text = "Overall:\n- Clear writing.\n- Missing baselines,\n  e.g. for CIFAR.\n\nI lean reject."
    local_store.put_bytes("reviews/x/b.json", record("b", None, text=text))
    local_store.put_bytes(
        "reviews/x/c.json", record("c", None, text="Good paper. Weak experiments, e.g. Table 2.")
    )
    system = load_system("x", "reviews/x", local_store)

    (a,) = system.reviews["a"]
    assert a.aspects == AspectSchema.FOUR.keys and a.lineage["aspect_schema"] == "4"
    assert a.empty_aspects == ("acceptance", "rejection")
    (b,) = system.reviews["b"]
    assert [p.text for p in b.points] == [
        "Clear writing.",
        "Missing baselines, e.g. for CIFAR.",
        "I lean reject.",
    ]
    assert {p.aspect for p in b.points} == {None} and b.aspects == () and b.empty_aspects == ()
    (c,) = system.reviews["c"]
    assert [p.text for p in c.points] == ["Good paper.", "Weak experiments, e.g. Table 2."]
    assert system.lineage["aspect_schemas"] == ["4"]  # unparsed reviews follow no schema


def test_malformed_records_are_excluded_with_reasons(local_store: ArtifactStore) -> None:
    good = record("good", {"idea": ["Fine."]})
    criterion = AspectSchema.SEVEN.aspects[0].criterion
    bad = {
        "notjson": b"{'review': ",
        "alist": b"[1, 2]",
        "noreview": json.dumps({"paper_id": "noreview"}).encode(),
        "renamed": record("other", {"idea": ["x."]}),
        "unknown": json.dumps(
            {"review": {"aspects": [{"name": "Vibes", "items": ["x"], "empty": False}]}}
        ).encode(),
        "contradicts": json.dumps(
            {"review": {"aspects": [{"name": criterion, "items": ["A point."], "empty": True}]}}
        ).encode(),
        "twice": json.dumps(
            {"review": {"aspects": [{"name": criterion, "items": ["a"]}, {"name": "idea", "items": ["b"]}]}}
        ).encode(),
        "mixed": json.dumps(
            {
                "review": {
                    "aspects": [
                        {"name": criterion, "items": ["a"]},
                        {"name": "Significance and novelty", "items": ["b"]},
                    ]
                }
            }
        ).encode(),
        "blank": record("blank", None, text="  \n"),
        "items": json.dumps({"review": {"aspects": [{"name": criterion, "items": "a string"}]}}).encode(),
    }
    local_store.put_bytes("reviews/x/good.json", good)
    for paper_id, data in bad.items():
        local_store.put_bytes(f"reviews/x/{paper_id}.json", data)
    local_store.put_bytes("reviews/x/README.txt", b"notes")
    local_store.put_bytes("reviews/x/old/good.json", good)

    system = load_system("x", "reviews/x", local_store)

    assert system.papers == {"good"}
    reasons = {e.what.rsplit("/", 1)[-1]: e.reason for e in system.exclusions}
    assert len(system.exclusions) == len(bad) + 2  # nothing dropped silently
    assert reasons["notjson.json"].startswith("not JSON")
    assert (
        "not a review record" in reasons["alist.json"] and "not a review record" in reasons["noreview.json"]
    )
    assert "paper_id 'other' does not match its file name renamed.json" in reasons["renamed.json"]
    assert "'Vibes', is no criterion" in reasons["unknown.json"]
    assert "marked empty but holds 1 items" in reasons["contradicts.json"]
    assert "appears twice" in reasons["twice.json"]
    assert "mix the criteria" in reasons["mixed.json"]
    assert reasons["blank.json"] == "empty review: no aspects and no text"
    assert "review.aspects.0.items: Input should be a valid list" in reasons["items.json"]
    assert "not a review record" in reasons["README.txt"] and "sub-folder" in reasons["old"]
    assert {e.paper_id for e in system.exclusions if e.what.endswith(".json")} == set(bad)


def test_aspects_never_written_load_apart_from_declined_ones(local_store: ArtifactStore) -> None:
    cut = record("cut", {"idea": ["x"]}, missing=("suggestions", "other"))
    local_store.put_bytes("reviews/x/cut.json", cut)
    contradicts = json.loads(record("bad", {"idea": ["x"]}))
    contradicts["review"]["aspects"][0]["missing"] = True  # "idea" holds a point
    local_store.put_bytes("reviews/x/bad.json", json.dumps(contradicts).encode())

    system = load_system("x", "reviews/x", local_store)

    (review,) = system.reviews["cut"]
    assert review.missing_aspects == ("suggestions", "other")
    assert review.empty_aspects == ("prior_work", "experiments", "acceptance", "rejection")
    assert [e.reason for e in system.exclusions] == ["aspect 'idea' is marked missing but holds 1 items"]


def test_a_corrupted_record_is_excluded(s3_store: Any) -> None:
    write_batch(s3_store)
    data = record("p2", {"experiments": ["Weak results."]})
    wrong = hashlib.sha256(b"what was written first").hexdigest()
    s3_store._put("reviews/ours/p2.json", io.BytesIO(data), len(data), wrong)  # bytes ≠ recorded hash
    system = load_system("ours", "reviews/ours", s3_store)
    assert system.papers == {"p1", "p3"}
    (exclusion,) = system.exclusions
    assert exclusion.paper_id == "p2" and "does not match its recorded sha256" in exclusion.reason


def test_a_system_without_any_usable_review_is_an_error(local_store: ArtifactStore) -> None:
    local_store.put_bytes("reviews/x/a.json", b"not json")
    local_store.put_bytes("reviews/x/b.json", record("b", None, text=""))
    with pytest.raises(
        InvalidArgument, match=r"none of the 2 records .* is a usable review .*a\.json: not JSON"
    ):
        load_system("x", "reviews/x", local_store)


def test_an_unknown_system_says_what_was_looked_for(local_store: ArtifactStore, tmp_path: Path) -> None:
    write_batch(local_store)
    with pytest.raises(NotFound) as error:
        load_system("ghost", "reviews/ghost", local_store)
    message = str(error.value)
    assert local_store.uri_for("reviews/ghost") + "/*.json" in message
    assert "Systems there: ours." in message and "Accepted: a CSV of imported reviews" in message
    with pytest.raises(NotFound, match="Systems there: ours"):
        load_system("ghost", local_store.uri, local_store)
    with pytest.raises(NotFound, match="no system 'x' at"):
        load_system("x", str(tmp_path / "nowhere"))
    with pytest.raises(NotFound, match=r"missing\.csv"):
        load_system("x", str(tmp_path / "missing.csv"))
    with pytest.raises(InvalidArgument, match="URI is empty"):
        load_system("x", " ", local_store)
    with pytest.raises(InvalidArgument, match="no store key"):
        load_system("x", "reviews/../secrets", local_store)


def test_imported_csv_from_a_path_and_from_a_store(shared_archive, s3_store: ArtifactStore) -> None:
    path = shared_archive("iclr2022-llm-reviews") / "llm_reviews" / CLAUDE
    local = load_system("claude", str(path))
    assert local.kind == "imported" and local.name == "claude" and len(local.reviews) == 500
    assert local.lineage["model"] == "claude-3-5-sonnet-20240620" and local.uri.endswith(CLAUDE)
    s3_store.put_file("imports/claude.csv", path)
    remote = load_system("claude", "imports/claude.csv", s3_store)
    assert remote.uri == s3_store.uri_for("imports/claude.csv")
    assert {p: r[0].points for p, r in remote.reviews.items()} == {
        p: r[0].points for p, r in local.reviews.items()
    }
    assert remote.lineage["sha256"] == local.lineage["sha256"]


# ---- the human set ----------------------------------------------------------------------------------------
def _truth_row(
    paper_id: str, split: str, points: list[tuple[str, str, str | None]], reviewers: list[str]
) -> dict:
    """A ground_truth.jsonl row as data-prep's `_ground_truth` writes it."""
    return {
        "paper_id": paper_id,
        "split": split,
        "title": f"Title of {paper_id}",
        "decision": "Accept (poster)",
        "reviewers": [{"reviewer_id": r, "scores": {"RECOMMENDATION": 4}} for r in reviewers],
        "points": [
            {
                "text": text,
                "reviewer_id": reviewer,
                "section": "strengths_weaknesses",
                "kind": "weakness",
                "aspect": aspect,
            }
            for reviewer, text, aspect in points
        ],
    }


TRUTH = [
    _truth_row(
        "h1",
        "test",
        [
            ("R1", "The paper proposes X.", None),
            ("R1", "No ablation   of the loss.", "rejection"),
            ("R1", "Clear writing.", "acceptance"),
            ("R2", "Baselines are missing.", "experiments"),
            ("R3", "This paper studies Y.", None),
        ],
        ["R1", "R2", "R3"],
    ),
    _truth_row("h2", "test", [("R1", "Only one reviewer made points.", "other")], ["R1", "R2"]),
    _truth_row(
        "h3", "train", [("R1", "A train paper point.", "idea"), ("R2", "Another one.", "idea")], ["R1", "R2"]
    ),
    _truth_row("h4", "test", [("R1", "Only a summary.", None)], ["R1"]),
]


def publish_dataset(
    store: ArtifactStore, rows: list[Any], prefix: str = "datasets/gt/v1", **manifest: Any
) -> str:
    """A dataset in data-prep's layout: ground_truth.jsonl, then the manifest last (with file hashes)."""
    with store.publish(prefix) as pub:
        lines = (json.dumps(r, ensure_ascii=False) if not isinstance(r, str) else r for r in rows)
        pub.put_bytes("ground_truth.jsonl", "".join(f"{line}\n" for line in lines).encode())
        pub.manifest.update(
            {
                "kind": "dataset",
                "name": "gt",
                "version": "v1",
                "aspect_schema": "7",
                "builder_version": "dataprep-v1",
            }
            | manifest
        )
    return prefix


def test_human_reviews_of_a_dataset(local_store: ArtifactStore) -> None:
    prefix = publish_dataset(local_store, TRUTH)
    human = load_human(prefix, local_store)

    assert human.kind == "human" and human.uri == local_store.uri_for(prefix)
    assert human.papers == {"h1", "h2", "h3", "h4"}
    r1, r2 = human.reviews["h1"]
    assert (r1.reviewer, r2.reviewer) == ("R1", "R2")
    assert r1.points == (
        Point("No ablation of the loss.", "rejection"),
        Point("Clear writing.", "acceptance"),
    )
    assert r1.lineage == {"split": "test", "decision": "Accept (poster)", "scores": {"RECOMMENDATION": 4}}
    assert human.reviews["h4"] == []  # kept, so that alignment can say "no human points"
    lineage = human.lineage
    assert (lineage["dataset"], lineage["version"], lineage["aspect_schema"]) == ("gt", "v1", "7")
    assert lineage["ground_truth_sha256"] == local_store.stat(f"{prefix}/ground_truth.jsonl").sha256
    assert lineage["summary_points_left_out"] == 3 and lineage["points"] == 6 and lineage["reviews"] == 5
    assert set(lineage["leave_one_out_unavailable"]) == {"h2", "h4"}
    reasons = {e.what: e.reason for e in human.exclusions}
    assert reasons == {
        "h1 reviewer R3": "no review point left (1 summary sentences are no review points)",
        "h2 reviewer R2": "no review point left",
        "h4 reviewer R1": "no review point left (1 summary sentences are no review points)",
    }

    test_only = load_human(local_store.uri_for(prefix), local_store, split="test")
    assert test_only.papers == {"h1", "h2", "h4"} and test_only.lineage["papers_of_other_splits"] == 1
    with_summaries = load_human(prefix, local_store, include_summaries=True)
    assert with_summaries.reviews["h1"][0].points[0] == Point("The paper proposes X.", None)
    assert len(with_summaries.reviews["h1"]) == 3


def test_human_reviews_from_an_s3_dataset(s3_store: ArtifactStore) -> None:
    prefix = publish_dataset(s3_store, TRUTH)
    human = load_human(s3_store.uri_for(prefix), s3_store)
    assert human.uri == s3_store.uri_for(prefix) and len(human.reviews["h1"]) == 2


def test_malformed_ground_truth_lines_are_excluded(local_store: ArtifactStore) -> None:
    rows: list[Any] = [
        TRUTH[0],
        "{not json",
        {"paper_id": "x"},
        TRUTH[0],
        _truth_row(
            "h5", "test", [("R1", "A point.", "vibes"), ("", "No reviewer.", "idea"), ("R2", " ", "idea")], []
        ),
    ]
    human = load_human(publish_dataset(local_store, rows), local_store)
    reasons = {e.what: e.reason for e in human.exclusions}
    assert reasons["ground_truth.jsonl line 2"].startswith("not JSON")
    assert "not a ground-truth row" in reasons["ground_truth.jsonl line 3"]
    assert reasons["ground_truth.jsonl line 4"] == "paper h1 appears twice; the first is kept"
    assert "aspect 'vibes' is not one of" in reasons["h5 point 0"]
    assert reasons["h5 point 1"] == "has no reviewer_id" and reasons["h5 point 2"] == "has no text"


def test_a_dataset_must_exist_and_match_its_manifest(local_store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"no data-prep dataset at 'datasets/none/v1'.*manifest"):
        load_human("datasets/none/v1", local_store)
    local_store.put_bytes("datasets/unfinished/v1/ground_truth.jsonl", b"{}\n")  # a build that never finished
    with pytest.raises(NotFound, match="without its manifest does not exist"):
        load_human("datasets/unfinished/v1", local_store)
    publish_dataset(local_store, TRUTH)
    with pytest.raises(NotFound, match=r"Published under it: .*datasets/gt/v1"):
        load_human("datasets/gt", local_store)  # no version named

    path = tmp_path / "store" / "datasets" / "gt" / "v1" / "ground_truth.jsonl"
    path.write_bytes(path.read_bytes() + b"\n")
    with pytest.raises(FailedPrecondition, match="changed after the build; rebuild"):
        load_human("datasets/gt/v1", local_store)

    with local_store.publish("datasets/old/v1") as pub:
        pub.put_bytes("train.jsonl", b"")
        pub.manifest["kind"] = "dataset"
    with pytest.raises(FailedPrecondition, match=r"no ground_truth\.jsonl in its manifest"):
        load_human("datasets/old/v1", local_store)
    with pytest.raises(InvalidArgument, match="no paper of split 'val'"):
        load_human(publish_dataset(local_store, TRUTH, prefix="datasets/gt/v2"), local_store, split="val")
    with pytest.raises(InvalidArgument, match="split 'dev' is none of"):
        load_human("datasets/gt/v2", local_store, split="dev")


@pytest.fixture(scope="module")
def real_build(tmp_path_factory) -> str:
    """A real data-prep build of two papers of the bundled sample (the smallest real thing; ~20 s)."""
    from reviewstack.dataprep.build import build_dataset
    from reviewstack.dataprep.config import BuildConfig

    root = tmp_path_factory.mktemp("gt-build")
    source = copy_papers(root / "src", sample_ids()[:2])
    config = BuildConfig(
        sources=[str(source)], output=str(root / "out"), name="tiny", paper_version="decision"
    )
    return build_dataset(config).uri


def test_human_reviews_of_a_real_build(real_build: str) -> None:
    human = load_human(real_build)
    store = open_store(real_build)
    rows = [json.loads(line) for line in store.get_bytes("ground_truth.jsonl").decode().splitlines()]
    assert human.papers == {row["paper_id"] for row in rows} and len(rows) == 2
    for row in rows:
        kept = [p for p in row["points"] if p["aspect"] is not None]
        reviews = human.reviews[row["paper_id"]]
        assert sum(len(r.points) for r in reviews) == len(kept)
        assert {r.reviewer for r in reviews} == {p["reviewer_id"] for p in kept}
        assert all(p.aspect in AspectSchema.SEVEN.keys for r in reviews for p in r.points)
    manifest = store.read_manifest("")
    assert human.lineage["version"] == manifest["version"] and human.lineage["dataset"] == "tiny"
    assert human.lineage["summary_points_left_out"] == sum(
        p["aspect"] is None for row in rows for p in row["points"]
    )


# ---- alignment ------------------------------------------------------------------------------------------
def _system(name: str, reviews: dict[str, Review], **fields: Any) -> System:
    return System(
        name=name,
        uri=f"mem://{name}",
        kind="generated",
        reviews={p: [r] for p, r in reviews.items()},
        **fields,
    )


def test_align_papers_keeps_the_shared_papers_and_says_why_the_rest_go(local_store: ArtifactStore) -> None:
    human = load_human(publish_dataset(local_store, TRUTH), local_store)
    point = (Point("Something.", "idea"),)
    a = _system(
        "a",
        {
            "h1": Review("h1", (), missing_aspects=AspectSchema.SEVEN.keys),  # cut before any point: kept
            "h2": Review("h2", (), empty_aspects=AspectSchema.SEVEN.keys),  # a refusal: kept
            "h3": Review("h3", point),
            "h4": Review("h4", point),
            "elsewhere": Review("elsewhere", point),
        },
    )
    b = _system(
        "b",
        {"h1": Review("h1", point), "h2": Review("h2", point), "h3": Review("h3", ())},
        exclusions=[Exclusion("reviews/b/h4.json", "not JSON (…)", "h4")],  # the loader's reason
    )

    papers, exclusions = align_papers([a, b], human)

    assert papers == ["h1", "h2"]
    reasons = {e.what: e.reason for e in exclusions}
    assert reasons == {
        "elsewhere": "not in the human set (" + human.uri + "); not reviewed by system b",
        "h3": "empty review of system b",
        "h4": "no human points; not reviewed by system b (not JSON (…))",
    }
    assert all(e.paper_id == e.what for e in exclusions)


def test_align_papers_refuses_bad_requests(local_store: ArtifactStore) -> None:
    human = load_human(publish_dataset(local_store, TRUTH), local_store)
    a = _system("a", {"h1": Review("h1", (Point("x"),))})
    with pytest.raises(InvalidArgument, match="a given twice"):
        align_papers([a, a], human)
    with pytest.raises(InvalidArgument, match="must be the human set"):
        align_papers([a], a)
    papers, exclusions = align_papers([], human)  # humans against each other only
    assert papers == ["h1", "h2", "h3"] and [e.what for e in exclusions] == ["h4"]
    nothing, reasons = align_papers([_system("z", {"zz": Review("zz", (Point("x"),))})], human)
    assert nothing == [] and len(reasons) == 5
