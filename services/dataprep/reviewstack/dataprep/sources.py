"""Source folders: find each paper's text and its reviews, and read them, reporting every input left out.

A source is any store URI (a local folder, `s3://bucket/prefix`) holding `papers/<id>.md|.txt|.pdf` and
`reviews/<id>.json`. Nothing is dropped silently: every file that does not become part of a paper input
is returned as a `Skipped` entry with its reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from reviewstack.common.errors import InvalidArgument, NotFound
from reviewstack.common.papers import pdf_supported
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import ArtifactStore, open_store

PAPER_SUFFIXES = (".md", ".txt", ".pdf")  # in order of preference when one id has several


@dataclass(frozen=True)
class Skipped:
    """An input left out of the dataset, and why."""

    path: str
    source: str
    reason: str
    paper_id: str = ""

    def to_json(self) -> dict[str, str]:
        return {"paper_id": self.paper_id, "path": self.path, "source": self.source, "reason": self.reason}


@dataclass(frozen=True)
class PaperInput:
    """One paper id found in a source: its text file and its review file."""

    paper_id: str
    source: str
    paper_key: str
    review_key: str


@dataclass(frozen=True)
class InputFile:
    source: str
    path: str
    sha256: str
    size: int

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "path": self.path, "sha256": self.sha256, "size": self.size}


def open_source(uri: str, settings: StoreSettings | None) -> ArtifactStore:
    """Open a source folder, failing before any work when it is missing or is not a source."""
    local = Path(unquote(urlsplit(uri).path)) if uri.startswith("file://") else None
    if "://" not in uri:
        local = Path(uri)
    if local is not None and not local.is_dir():
        raise NotFound(f"source folder {uri} does not exist (expected a folder with papers/ and reviews/)")
    store = open_store(uri, settings)
    dirs = set(store.list_dirs(""))
    if not {"papers", "reviews"} & dirs:
        raise InvalidArgument(
            f"source {store.uri} has neither a papers/ nor a reviews/ folder; "
            "each source must hold papers/<id>.md|.txt|.pdf and reviews/<id>.json"
        )
    return store


def discover(stores: Sequence[ArtifactStore]) -> tuple[list[PaperInput], list[Skipped]]:
    """Pair papers with reviews across sources; the first source holding an id wins."""
    inputs: dict[str, PaperInput] = {}
    skipped: list[Skipped] = []
    for store in stores:
        papers: dict[str, str] = {}
        for key in store.keys("papers"):
            path = PurePosixPath(key)
            if path.suffix.lower() not in PAPER_SUFFIXES:
                skipped.append(Skipped(key, store.uri, f"unsupported paper file type {path.suffix!r}"))
                continue
            if path.suffix.lower() == ".pdf" and not pdf_supported():
                skipped.append(
                    Skipped(
                        key,
                        store.uri,
                        "PDF papers need a PDF library: pip install 'reviewstack-dataprep[pdf]'",
                        path.stem,
                    )
                )
                continue
            previous = papers.get(path.stem)
            if previous is not None:
                keep, drop = sorted(
                    (previous, key), key=lambda k: PAPER_SUFFIXES.index(PurePosixPath(k).suffix.lower())
                )
                papers[path.stem] = keep
                skipped.append(
                    Skipped(drop, store.uri, f"another text of the same paper is used: {keep}", path.stem)
                )
                continue
            papers[path.stem] = key
        reviews: dict[str, str] = {}
        for key in store.keys("reviews"):
            if key.lower().endswith(".json"):
                reviews[PurePosixPath(key).stem] = key
            else:
                skipped.append(Skipped(key, store.uri, "review files must be .json"))
        for paper_id in sorted(papers.keys() | reviews.keys()):
            paper_key, review_key = papers.get(paper_id), reviews.get(paper_id)
            if paper_key is None:
                skipped.append(Skipped(review_key or "", store.uri, "review without a paper", paper_id))
            elif review_key is None:
                skipped.append(Skipped(paper_key, store.uri, "paper without reviews", paper_id))
            elif paper_id in inputs:
                first = inputs[paper_id]
                skipped.append(
                    Skipped(
                        paper_key,
                        store.uri,
                        f"duplicate paper id: already read from {first.source}/{first.paper_key}",
                        paper_id,
                    )
                )
            else:
                inputs[paper_id] = PaperInput(paper_id, store.uri, paper_key, review_key)
    return list(inputs.values()), skipped


def read_bytes(store: ArtifactStore, key: str) -> tuple[bytes, InputFile]:
    data = store.get_bytes(key)
    return data, InputFile(store.uri, key, hashlib.sha256(data).hexdigest(), len(data))


def decode_review(data: bytes) -> dict:
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidArgument("review file is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument(f"expected a JSON object, found {type(raw).__name__}")
    return raw
