"""Inputs → Systems: the review service's batch output, imported CSVs, folders of review records, and the
human reviews of a data-prep dataset; then the papers every one of them covers.

Where a URI points: `s3://` and `file://` URIs are opened as stores (one inside the given store is read
through it, with its credentials); an absolute path or one starting with `.` or `~` is local; any other
path is a key of the given store first, then a local path. Bad input is reported, never dropped: a
malformed file becomes an Exclusion with its reason, and a source with nothing usable is an error.
"""

from __future__ import annotations

import contextlib
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ReviewStackError,
)
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import ArtifactStore, LocalStore, open_store
from reviewstack.evaluation import ground_truth
from reviewstack.evaluation.importers import import_llm_reviews_csv
from reviewstack.evaluation.model import Exclusion, Review, System
from reviewstack.evaluation.records import MalformedRecord, review_from_record

__all__ = ["align_papers", "load_human", "load_system"]

StoreArg = ArtifactStore | StoreSettings | None
SPLITS = ("train", "val", "test")
_READERS = 8  # records read at once: S3 round trips dominate a batch of small JSON files
SYSTEM_FORMS = (
    "a CSV of imported reviews (file.csv, or a .csv key or URI in a store); a folder of review records "
    "<paper-id>.json (a local directory, file:///dir, s3://bucket/prefix, or a key prefix of the store "
    "such as reviews/<system>); or a store holding reviews/<system>/"
)


@dataclass(frozen=True)
class _Place:
    """Somewhere a URI may point: a key (a file or a folder; '' = the root) of a store."""

    store: ArtifactStore
    key: str

    def uri(self, key: str | None = None) -> str:
        key = self.key if key is None else key
        return self.store.uri_for(key) if key else self.store.uri

    def join(self, *parts: str) -> str:
        return "/".join(p for p in (self.key, *parts) if p)


# ---- systems ----------------------------------------------------------------------------------------
def load_system(name: str, uri: str, store: StoreArg = None) -> System:
    """The system `name` from `uri` (see the module docstring for where URIs point, and SYSTEM_FORMS for
    what may be there). `store` is the default store, or the settings that open it."""
    if not name or not name.strip():
        raise InvalidArgument("a system needs a name (e.g. reviewer-v1=reviews/reviewer-v1)")
    places = _places(uri, store)
    for place in places:
        if place.key.lower().endswith(".csv") and place.store.exists(place.key):
            system = import_llm_reviews_csv(place.store.get_bytes(place.key), place.uri(), name)
            system.lineage["uri"] = place.uri()
            return system
        for folder in _folders(place, name):
            keys = _keys(place.store, folder)
            if any(k.endswith(".json") for k in keys):
                return _load_records(name, _Place(place.store, folder), keys)
    raise NotFound(
        f"no system {name!r} at {uri!r}: looked for "
        + ", ".join(_looked_at(p, name) for p in places)
        + f". {_known_systems(places)}Accepted: {SYSTEM_FORMS}."
    )


def _load_records(name: str, folder: _Place, keys: list[str]) -> System:
    """Every `<paper-id>.json` directly in `folder`; anything else there is reported, not read."""
    records = [k for k in keys if k.endswith(".json")]
    exclusions = [
        Exclusion(folder.uri(k), "not a review record (<paper-id>.json)") for k in keys if k not in records
    ]
    exclusions += [
        Exclusion(folder.uri(d), "a sub-folder: review records sit directly in the system's folder")
        for d in folder.store.list_dirs(folder.key)
    ]
    with ThreadPoolExecutor(_READERS) as pool:
        results = list(pool.map(lambda key: _read_record(folder.store, key), records))
    reviews: dict[str, list[Review]] = {}
    for key, result in zip(records, results, strict=True):
        if isinstance(result, Review):
            reviews[result.paper_id] = [result]
        else:
            exclusions.append(Exclusion(folder.uri(key), result, _paper_id(key)))
    if not reviews:
        reasons = "; ".join(f"{e.what}: {e.reason}" for e in exclusions[:3])
        raise InvalidArgument(
            f"system {name!r}: none of the {len(records)} records in {folder.uri()} is a usable review "
            f"({reasons}); write them again with `reviewstack review --batch`"
        )
    return System(
        name=name,
        uri=folder.uri(),
        kind="generated",
        reviews=reviews,
        lineage=_records_lineage(folder, reviews, len(records)),
        exclusions=exclusions,
    )


def _read_record(store: ArtifactStore, key: str) -> Review | str:
    """The review in one record, or why there is none."""
    try:
        data = store.get_bytes(key)
        return review_from_record(data, _paper_id(key), {"record": store.uri_for(key)})
    except (MalformedRecord, NotFound, FailedPrecondition, PermissionDenied) as exc:  # bad, gone, corrupt
        return str(exc)


def _records_lineage(folder: _Place, reviews: dict[str, list[Review]], records: int) -> dict[str, Any]:
    """What a report needs to trace the system: its models, prompts and refusal penalties (λ)."""

    def distinct(get: Any) -> list[Any]:
        return sorted({get(r[0].lineage) for r in reviews.values()} - {None}, key=str)

    return {
        "source": "review-service batch output",
        "uri": folder.uri(),
        "records": records,
        "loaded": len(reviews),
        "models": distinct(lambda lin: lin.get("model")),
        "prompt_versions": distinct(lambda lin: lin.get("prompt_version")),
        "refusal_penalties": distinct(lambda lin: (lin.get("parameters") or {}).get("refusal_penalty", 0.0)),
        "aspect_schemas": distinct(lambda lin: lin.get("aspect_schema")),
        "recorded_systems": distinct(lambda lin: lin.get("system")),
    }


def _paper_id(key: str) -> str:
    return PurePosixPath(key).name.removesuffix(".json")


# ---- the human reviews ------------------------------------------------------------------------------
def load_human(
    uri: str, store: StoreArg = None, *, split: str | None = None, include_summaries: bool = False
) -> System:
    """The human reviews of a data-prep dataset (`datasets/<name>/<version>/`), one Review per reviewer.

    `split` keeps one split's papers. Summary sentences (aspect None) are no review points and stay out
    unless `include_summaries`. Papers with fewer than 2 reviewers with points stay (they still score the
    systems); `lineage["leave_one_out_unavailable"]` names them, since humans can't be scored on them.
    """
    if split is not None and split not in SPLITS:
        raise InvalidArgument(f"split {split!r} is none of {', '.join(SPLITS)}")
    places = _places(uri, store)
    place = next((p for p in places if p.store.is_published(p.key)), None)
    if place is None:
        raise NotFound(
            f"no data-prep dataset at {uri!r}: looked for "
            + ", ".join(p.uri(p.join("manifest.json")) for p in places)
            + ". A dataset without its manifest does not exist (the manifest is written last)."
            + _versions(places)
            + " Build one with `reviewstack data build`, or name datasets/<name>/<version>."
        )
    manifest = place.store.read_manifest(place.key)
    data = _ground_truth_bytes(place, manifest)
    schema = AspectSchema.parse(manifest.get("aspect_schema", AspectSchema.SEVEN.value))
    truth = ground_truth.parse_ground_truth(data, schema.keys, split, include_summaries)
    if not truth.reviews:
        reasons = "; ".join(f"{e.what}: {e.reason}" for e in truth.exclusions[:3])
        which = f" of split {split!r}" if split else ""
        raise InvalidArgument(
            f"{place.uri()} holds no paper{which} with human reviews{': ' + reasons if reasons else ''}"
        )
    return System(
        name="human",
        uri=place.uri(),
        kind="human",
        reviews=truth.reviews,
        lineage={
            "source": "data-prep ground truth",
            "uri": place.uri(),
            "dataset": manifest.get("name"),
            "version": manifest.get("version"),
            "ground_truth_sha256": manifest["files"][ground_truth.FILE_NAME]["sha256"],
            "aspect_schema": schema.value,
            "builder_version": manifest.get("builder_version"),
            "distiller": manifest.get("distiller"),
            "split": split or "all",
            "papers": len(truth.reviews),
            "reviews": sum(len(r) for r in truth.reviews.values()),
            "points": sum(len(review.points) for r in truth.reviews.values() for review in r),
            "summary_points_left_out": truth.summary_points,
            "papers_of_other_splits": truth.other_splits,
            "leave_one_out_unavailable": truth.single_reviewer,
        },
        exclusions=truth.exclusions,
    )


def _ground_truth_bytes(place: _Place, manifest: dict[str, Any]) -> bytes:
    """ground_truth.jsonl, checked against the manifest: the numbers must come from what it describes."""
    where = place.uri()
    if manifest.get("kind", "dataset") != "dataset":
        raise FailedPrecondition(f"{where} is a {manifest.get('kind')!r}, not a data-prep dataset")
    recorded = (manifest.get("files") or {}).get(ground_truth.FILE_NAME)
    if not isinstance(recorded, dict) or not recorded.get("sha256"):
        raise FailedPrecondition(
            f"{where} has no {ground_truth.FILE_NAME} in its manifest: it was built without the human points;"
            " rebuild it with the current `reviewstack data build`"
        )
    data = place.store.get_bytes(place.join(ground_truth.FILE_NAME))
    if hashlib.sha256(data).hexdigest() != recorded["sha256"]:
        raise FailedPrecondition(
            f"{place.uri(place.join(ground_truth.FILE_NAME))} does not match the sha256 its manifest records:"
            " it was changed after the build; rebuild the dataset"
        )
    return data


def _versions(places: list[_Place]) -> str:
    """ " Published under it: v1, v2." when the URI names a dataset without its version."""
    for place in places:
        with contextlib.suppress(ReviewStackError, OSError):  # a hint must not hide the real error
            found = place.store.list_published(place.key)
            if found:
                return f" Published under it: {', '.join(place.uri(k) for k in found[:5])}."
    return ""


# ---- alignment ----------------------------------------------------------------------------------------
def align_papers(systems: list[System], human: System) -> tuple[list[str], list[Exclusion]]:
    """The papers every system and the human set cover, sorted, and one Exclusion per paper left out that
    gives every reason. A review with no point that refused every aspect stays: a refusal is an answer
    (it scores zero, and the penalty sweep must see it). So does one cut before it wrote a point: it is
    what the system produced, and leaving it out would hide the failure. One with neither points nor
    aspects is empty."""
    if human.kind != "human":
        raise InvalidArgument(f"{human.name!r} is a {human.kind} system; the reference must be the human set")
    names = [s.name for s in systems]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidArgument(f"system names must be distinct: {', '.join(repeated)} given twice")
    missing_why = {s.name: {e.paper_id: e.reason for e in s.exclusions if e.paper_id} for s in systems}
    papers = set(human.reviews).union(*(s.reviews for s in systems), *missing_why.values())
    kept: list[str] = []
    excluded: list[Exclusion] = []
    for paper in sorted(papers):
        reasons = []
        if paper not in human.reviews:
            reasons.append(f"not in the human set ({human.uri})")
        elif not any(r.points for r in human.reviews[paper]):
            reasons.append("no human points")
        for system in systems:
            reviews = system.reviews.get(paper)
            if not reviews:
                why = missing_why[system.name].get(paper)
                reasons.append(f"not reviewed by system {system.name}" + (f" ({why})" if why else ""))
            elif all(not (r.points or r.empty_aspects or r.missing_aspects) for r in reviews):
                reasons.append(f"empty review of system {system.name}")
        if reasons:
            excluded.append(Exclusion(paper, "; ".join(reasons), paper))
        else:
            kept.append(paper)
    return kept, excluded


# ---- where a URI points -------------------------------------------------------------------------------
def _places(uri: str, store: StoreArg) -> list[_Place]:
    """The places `uri` may mean, in the order they are tried."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidArgument("the URI is empty: give a path, a store key or an s3:// URI")
    uri = uri.strip()
    default, settings = _default_store(store)
    if "://" in uri:
        if default is not None and (inside := _inside(default, uri)) is not None:
            return [_Place(default, inside)]
        if uri.lower().endswith(".csv"):
            parent, _, name = uri.rpartition("/")
            return [_Place(open_store(parent, settings), name)]
        return [_Place(open_store(uri, settings), "")]
    places = []
    if default is not None and not uri.startswith(("/", ".", "~")):
        places.append(_Place(default, _store_key(uri)))
    path = Path(uri).expanduser()
    if path.is_file() or (not path.exists() and path.suffix.lower() == ".csv"):
        places.append(_Place(LocalStore(path.parent), path.name))
    else:
        places.append(_Place(LocalStore(path), ""))
    return places


def _default_store(store: StoreArg) -> tuple[ArtifactStore | None, StoreSettings | None]:
    """The store that plain keys name, and the settings for other s3:// URIs (None: the environment's)."""
    if isinstance(store, StoreSettings):
        return open_store(store.store, store), store
    return store, None


def _inside(store: ArtifactStore, uri: str) -> str | None:
    """`uri`'s key in `store`, when `uri` lies in it ('' for the store itself)."""
    root = store.uri.rstrip("/")
    if uri.rstrip("/") == root:
        return ""
    return uri[len(root) + 1 :].strip("/") if uri.startswith(root + "/") else None


def _store_key(uri: str) -> str:
    key = uri.strip("/")
    if "\\" in key or any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidArgument(f"{uri!r} is no store key: write it as plain 'a/b/c' segments")
    return key


def _keys(store: ArtifactStore, folder: str) -> list[str]:
    """The objects directly in `folder`; none when it is no folder (or not a valid key)."""
    try:
        return list(store.keys(folder, recursive=False))
    except (NotFound, InvalidArgument):
        return []


def _folders(place: _Place, name: str) -> list[str]:
    """The place as the system's folder, then as a store holding reviews/<name>/ (unless it is that)."""
    if PurePosixPath(place.key).name == name:
        return [place.key]
    return [place.key, place.join("reviews", name)]


def _looked_at(place: _Place, name: str) -> str:
    if place.key.lower().endswith(".csv"):
        return place.uri()
    return " and ".join(f"{place.uri(folder)}/*.json" for folder in _folders(place, name))


def _known_systems(places: list[_Place]) -> str:
    """ "Systems there: a, b. " - the folders under reviews/ near the places looked at."""
    found: set[str] = set()
    for place in places:
        here = PurePosixPath(place.key)
        bases = {place.join("reviews")}
        bases |= {str(here.parent)} if here.parent.name == "reviews" else set()
        bases |= {place.key} if here.name == "reviews" else set()
        for base in bases:
            with contextlib.suppress(ReviewStackError, OSError):  # a hint must not hide the real error
                found.update(PurePosixPath(d).name for d in place.store.list_dirs(base))
    return f"Systems there: {', '.join(sorted(found))}. " if found else ""
