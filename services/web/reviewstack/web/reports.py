"""The reports in the store (evaluations and experiments) and the paper-by-paper comparison the
Evaluation service answers.

Reports are read from the store the page was configured with, by kind and id only: a request never
names a key, a URI or a host. Listing needs no report format: a report exists when its report.json
does (both writers put it last), and report.html is served as its writer made it, self-contained.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import grpc

from reviewstack.common.errors import InvalidArgument, NotFound
from reviewstack.common.grpc.auth import TokenSource
from reviewstack.common.grpc.client import make_channel
from reviewstack.common.store import ArtifactStore
from reviewstack.v1 import evaluation_pb2, evaluation_pb2_grpc
from reviewstack.web.reviews import call_metadata

ReportKind = Literal["evaluations", "experiments"]
KINDS: tuple[ReportKind, ...] = ("evaluations", "experiments")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_LISTED = 500  # newest first; the store keeps the rest
COMPARE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ReportEntry:
    kind: ReportKind
    id: str


def check_report(kind: str, report_id: str) -> ReportEntry:
    if kind not in KINDS:
        raise NotFound(f"no report kind {kind!r}: reports are {' or '.join(KINDS)}")
    if not _ID.fullmatch(report_id) or ".." in report_id:
        raise InvalidArgument(f"{report_id[:80]!r} is not a report id")
    return ReportEntry(kind, report_id)  # type: ignore[arg-type]


def list_reports(store: ArtifactStore, kind: ReportKind) -> list[ReportEntry]:
    """Finished reports of `kind`, newest first (evaluation ids begin with their time)."""
    entries = []
    for folder in store.list_dirs(f"{kind}/"):
        report_id = folder.rstrip("/").rsplit("/", 1)[-1]
        if _ID.fullmatch(report_id) and store.exists(f"{kind}/{report_id}/report.json"):
            entries.append(ReportEntry(kind, report_id))
    return sorted(entries, key=lambda e: e.id, reverse=True)[:MAX_LISTED]


def report_html(store: ArtifactStore, entry: ReportEntry) -> bytes:
    key = f"{entry.kind}/{entry.id}/report.html"
    if not store.exists(key):
        raise NotFound(f"{entry.kind[:-1]} {entry.id!r} has no report.html in the store")
    return store.get_bytes(key)


class Comparisons:
    """The Evaluation service's ComparePaper, for one evaluation's paper and two of its systems."""

    def __init__(self, target: str, token: TokenSource) -> None:
        self.target = target
        self._token = token
        self._channel: grpc.aio.Channel | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.target)

    async def compare(self, eval_id: str, paper: str, a: str, b: str) -> evaluation_pb2.PaperComparison:
        if self._channel is None:
            self._channel = make_channel(self.target, aio=True)
        stub = evaluation_pb2_grpc.EvaluationStub(self._channel)
        request = evaluation_pb2.ComparePaperRequest(eval_id=eval_id, paper_id=paper, a=a, b=b)
        return await stub.ComparePaper(
            request, timeout=COMPARE_TIMEOUT_S, metadata=call_metadata(self._token)
        )

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
