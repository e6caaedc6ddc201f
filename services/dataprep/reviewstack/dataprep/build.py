"""The dataset build, as a recipe: preflight → read → distill → assemble → publish.

Every step either finishes or leaves nothing behind: inputs that cannot be used are collected with their
reasons (never dropped silently), problems with the build itself (a missing source folder, an unwritable
output, no tokenizer) stop it before any work, and the dataset only exists once its manifest — written
last by the store's publication — is there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from reviewstack.common.artifacts import ArtifactRef
from reviewstack.common.aspects import EMPTY_ASPECT
from reviewstack.common.errors import AlreadyExists, InvalidArgument
from reviewstack.common.llm_endpoints import LLMEndpoint
from reviewstack.common.logging import get_logger
from reviewstack.common.papers import clean_paper, decode_paper
from reviewstack.common.prompt import PROMPT_VERSION, PromptBuilder
from reviewstack.common.response_fit import fit_response, minimum_response_length
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import ArtifactStore, open_store
from reviewstack.common.tokenizer import LoadedTokenizer, load_tokenizer
from reviewstack.dataprep import points, reviews
from reviewstack.dataprep.config import BuildConfig, PaperVersionMode
from reviewstack.dataprep.distill import Distiller
from reviewstack.dataprep.distill.embedded import EmbeddedDistiller, assign_aspect
from reviewstack.dataprep.distill.llm import LLMDistiller
from reviewstack.dataprep.sources import InputFile, Skipped, decode_review, discover, open_source
from reviewstack.dataprep.splits import SPLITS, assign_splits
from reviewstack.dataprep.stats import aspect_stats, percentiles

log = get_logger(__name__)
BUILDER_VERSION = "dataprep-v1"  # bump when cleaning, point extraction or record layout change


class ProgressSink(Protocol):
    """Where a build reports progress; the gRPC operation and the CLI's progress bar both are one."""

    def update(self, stage: str, done: int = 0, total: int = 0, message: str = "") -> None: ...

    def check_cancelled(self) -> None: ...


class _Silent:
    def update(self, stage: str, done: int = 0, total: int = 0, message: str = "") -> None:
        pass

    def check_cancelled(self) -> None:
        pass


@dataclass
class PaperItem:
    """One usable paper: cleaned text, parsed reviews and their points."""

    paper_id: str
    source: str
    paper_key: str
    version: str
    text: str
    removed: list[str]
    record: reviews.PaperReviews
    points: list[reviews.HumanPoint]


@dataclass
class BuildResult:
    name: str
    version: str
    uri: str
    manifest_ref: ArtifactRef
    manifest: dict
    reused: bool = False
    skipped: list[dict] = field(default_factory=list)

    @property
    def split_counts(self) -> dict[str, int]:
        return {s: int(self.manifest["counts"][s]) for s in SPLITS}


class DatasetBuild:
    """Builds one dataset version from `config`; `run()` does all of it."""

    def __init__(
        self,
        config: BuildConfig,
        store_settings: StoreSettings | None = None,
        progress: ProgressSink | None = None,
        distiller: Distiller | None = None,
        llm: LLMEndpoint | None = None,
    ) -> None:
        """`llm` is the endpoint (with its key) a server resolved for the LLM distiller; without it the
        distiller calls `config.llm_endpoint` with the key in REVIEWSTACK_LLM_API_KEY (the CLI)."""
        self.config = config
        self._llm = llm
        self.store_settings = store_settings
        self.progress = progress or _Silent()
        self._distiller = distiller
        self.skipped: list[Skipped] = []
        self.inputs: list[InputFile] = []

    # -- steps, in order -------------------------------------------------------------------------------
    def preflight(self) -> None:
        """Fail before any work: sources exist, output writable, tokenizer loads, distiller configured."""
        self.sources = [open_source(uri, self.store_settings) for uri in self.config.sources]
        self.output: ArtifactStore = open_store(self.config.output, self.store_settings)
        self.output.check_writable()
        self.tokenizer: LoadedTokenizer = load_tokenizer(self.config.tokenizer)
        self.prompts = PromptBuilder(self.tokenizer, self.config.aspect_schema, self.config.max_prompt_length)
        needed = minimum_response_length(self.config.aspect_schema, self.tokenizer)
        if self.config.max_response_length < needed:
            raise InvalidArgument(
                f"max_response_length {self.config.max_response_length} is too small for the "
                f"{self.config.aspect_schema}-aspect review structure with this tokenizer: "
                f"use at least {needed}"
            )
        self.distiller = self._distiller or self._make_distiller()

    def read(self) -> list[PaperItem]:
        pairs, skipped = discover(self.sources)
        self.skipped.extend(skipped)
        stores = {s.uri: s for s in self.sources}
        items = []
        for done, pair in enumerate(pairs, start=1):
            self.progress.check_cancelled()
            item = self._read_one(stores[pair.source], pair.paper_id, pair.paper_key, pair.review_key)
            if item is not None:
                items.append(item)
            self.progress.update("reading", done, len(pairs), pair.paper_id)
        if not items:
            raise InvalidArgument(
                f"no usable paper in {', '.join(self.config.sources)}: "
                f"{len(self.skipped)} inputs skipped ({_reasons(self.skipped)})"
            )
        return items

    def version(self, items: list[PaperItem]) -> str:
        """Content address: the same inputs and settings always give the same version."""
        if self.config.version:
            return self.config.version
        identity = {
            "inputs": sorted((f.path, f.sha256) for f in self.inputs),
            "config": self.config.identity(),
            "code": [BUILDER_VERSION, PROMPT_VERSION, self.distiller.describe()],
            "tokenizer": self.tokenizer.sha256,
        }
        return "v" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]

    def distill(self, items: list[PaperItem]) -> dict:
        self.progress.update("distilling", 0, len(items), self.distiller.describe()["name"])

        def report(done: int, total: int) -> None:
            self.progress.check_cancelled()
            self.progress.update("distilling", done, total)

        return self.distiller.distill(
            [i.record for i in items], {i.paper_id: i.points for i in items}, report
        )

    def assemble(self, items: list[PaperItem], distilled: dict) -> tuple[list[dict], list[dict]]:
        splits = assign_splits(
            [i.paper_id for i in items if not distilled[i.paper_id].error],
            self.config.split,
            self.config.seed,
        )
        records, truth = [], []
        for done, item in enumerate(items, start=1):
            self.progress.check_cancelled()
            outcome = distilled[item.paper_id]
            if outcome.error:
                self.skipped.append(
                    Skipped(item.paper_key, item.source, f"distiller: {outcome.error}", item.paper_id)
                )
                continue
            records.append(self._record(item, outcome.aspects, splits[item.paper_id]))
            truth.append(self._ground_truth(item, splits[item.paper_id]))
            self.progress.update("tokenizing", done, len(items), item.paper_id)
        return records, truth

    def publish(self, version: str, records: list[dict], truth: list[dict]) -> BuildResult:
        prefix = f"datasets/{self.config.name}/{version}"
        self.progress.update("writing", 0, len(SPLITS) + 2, prefix)
        with self.output.publish(prefix, overwrite=self.config.overwrite) as pub:
            for split in SPLITS:
                _write_jsonl(pub, f"{split}.jsonl", (r for r in records if r["split"] == split))
            _write_jsonl(pub, "ground_truth.jsonl", iter(truth))
            pub.manifest.update(self._manifest(version, records, truth))
        self.progress.update("writing", len(SPLITS) + 2, len(SPLITS) + 2, prefix)
        return BuildResult(
            self.config.name,
            version,
            self.output.uri_for(prefix),
            pub.manifest_ref,
            self.output.read_manifest(prefix),
            reused=pub.reused,  # another writer published the identical version first
            skipped=[s.to_json() for s in self.skipped],
        )

    def run(self) -> BuildResult:
        self.progress.update("preflight")
        self.preflight()
        return self.execute()

    def execute(self) -> BuildResult:
        """Everything after `preflight` (a server runs preflight inside the RPC, this in the operation)."""
        items = self.read()
        version = self.version(items)
        prefix = f"datasets/{self.config.name}/{version}"
        if self.output.is_published(prefix) and not self.config.overwrite:
            if self.config.version:
                raise AlreadyExists(
                    f"dataset {self.config.name} version {version} already exists at "
                    f"{self.output.uri_for(prefix)}; pass --overwrite to replace it"
                )
            log.info(
                "dataset already built from identical inputs and settings", uri=self.output.uri_for(prefix)
            )
            manifest = self.output.read_manifest(prefix)
            return BuildResult(
                self.config.name,
                version,
                self.output.uri_for(prefix),
                self.output.stat(f"{prefix}/manifest.json"),
                manifest,
                reused=True,
                skipped=manifest.get("skipped", []),
            )
        distilled = self.distill(items)
        records, truth = self.assemble(items, distilled)
        if not records:
            raise InvalidArgument(f"the distiller produced no target: {_reasons(self.skipped)}")
        result = self.publish(version, records, truth)
        log.info("dataset published", uri=result.uri, records=len(records), skipped=len(self.skipped))
        return result

    # -- pieces ------------------------------------------------------------------------------------------
    def _make_distiller(self) -> Distiller:
        if self.config.distiller == "llm":
            if self._llm is not None:
                return LLMDistiller(
                    self._llm.url, self._llm.model, self.config.aspect_schema, api_key=self._llm.api_key()
                )
            return LLMDistiller(self.config.llm_endpoint, self.config.llm_model, self.config.aspect_schema)
        return EmbeddedDistiller(self.config.aspect_schema)

    def _read_one(
        self, store: ArtifactStore, paper_id: str, paper_key: str, review_key: str
    ) -> PaperItem | None:
        def skip(path: str, reason: str) -> None:
            self.skipped.append(Skipped(path, store.uri, reason, paper_id))

        review_bytes = store.get_bytes(review_key)
        paper_bytes = store.get_bytes(paper_key)
        try:
            record = reviews.parse_review_record(
                decode_review(review_bytes), source=f"{store.uri}/{review_key}"
            )
        except InvalidArgument as exc:
            skip(review_key, f"malformed review file: {exc}")
            return None
        usable = []
        for review in record.reviews:
            if reviews.has_recognisable_sections(review):
                usable.append(review)
            else:
                skip(
                    review_key,
                    f"review {review.reviewer_id} has no recognisable section (expected "
                    "SUMMARY:, STRENGTHS AND WEAKNESSES:, QUESTIONS:, LIMITATIONS: or similar headers)",
                )
        if not usable:
            skip(paper_key, "paper without reviews: its review file holds no usable official review")
            return None
        record = dataclasses.replace(record, reviews=usable)
        try:
            text = decode_paper(paper_key, paper_bytes)
        except InvalidArgument as exc:
            skip(paper_key, str(exc))
            return None
        cleaned = clean_paper(text, drop_appendix=self.config.drop_appendix)
        if not cleaned.text.strip():
            skip(paper_key, "no text left after cleaning")
            return None
        version = self._paper_version(record)
        if version is None:
            skip(
                paper_key,
                "paper version unknown: the review file has no decision; pass --paper-version early or late",
            )
            return None
        human_points = [p for review in usable for p in points.extract_points(review)]
        if not any(p.kind != "summary" for p in human_points):
            skip(review_key, "no review point could be extracted from the reviews")
            return None
        for key, data in ((paper_key, paper_bytes), (review_key, review_bytes)):
            self.inputs.append(InputFile(store.uri, key, hashlib.sha256(data).hexdigest(), len(data)))
        return PaperItem(
            paper_id, store.uri, paper_key, version, cleaned.text, list(cleaned.removed), record, human_points
        )

    def _paper_version(self, record: reviews.PaperReviews) -> str | None:
        mode = self.config.paper_version
        if mode is not PaperVersionMode.DECISION:
            return mode.value
        accepted = record.accepted
        if accepted is None and record.decision:
            accepted = record.decision.lower().startswith("accept")
        return None if accepted is None else ("late" if accepted else "early")

    def _record(self, item: PaperItem, aspects: dict[str, list[str]], split: str) -> dict:
        prompt = self.prompts.build(item.text)
        response = fit_response(
            aspects, self.config.aspect_schema, self.tokenizer, self.config.max_response_length
        )
        return {
            "paper_id": item.paper_id,
            "split": split,
            "title": item.record.title,
            "decision": item.record.decision,
            "paper_version": item.version,
            "messages": prompt.messages,
            "prompt": prompt.text,
            "response": response.text,
            "aspects": {k: v or [EMPTY_ASPECT] for k, v in response.aspects.items()},
            "prompt_tokens": prompt.tokens,
            "response_tokens": response.tokens,
            "truncated": prompt.truncated or response.truncated,
            "truncation": {
                "paper_tokens": prompt.paper_tokens,
                "paper_tokens_kept": prompt.paper_tokens_kept,
                "response_items_dropped": response.items_dropped,
                "response_items_shortened": response.items_shortened,
            },
            "cleaning_removed": item.removed,
            "source": f"{item.source}/{item.paper_key}",
        }

    def _ground_truth(self, item: PaperItem, split: str) -> dict:
        return {
            "paper_id": item.paper_id,
            "split": split,
            "title": item.record.title,
            "decision": item.record.decision,
            "reviewers": [{"reviewer_id": r.reviewer_id, "scores": r.scores} for r in item.record.reviews],
            "points": [
                {
                    "text": p.text,
                    "reviewer_id": p.reviewer_id,
                    "section": p.section,
                    "kind": p.kind,
                    "aspect": assign_aspect(p, self.config.aspect_schema),
                }
                for p in item.points
            ],
        }

    def _manifest(self, version: str, records: list[dict], truth: list[dict]) -> dict:
        by_split = Counter(r["split"] for r in records)
        return {
            "kind": "dataset",
            "name": self.config.name,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "builder_version": BUILDER_VERSION,
            "aspect_schema": self.config.aspect_schema.value,
            "aspects": [{"key": a.key, "criterion": a.criterion} for a in self.config.aspect_schema.aspects],
            "prompt_version": PROMPT_VERSION,
            "max_prompt_length": self.config.max_prompt_length,
            "max_response_length": self.config.max_response_length,
            "tokenizer": self.tokenizer.describe(),
            "distiller": self.distiller.describe(),
            "cleaning": {"drop_appendix": self.config.drop_appendix},
            "paper_version": self.config.paper_version.value,
            "paper_versions": dict(Counter(r["paper_version"] for r in records)),
            "split": {"shares": list(self.config.split), "seed": self.config.seed, "by": "paper"},
            "counts": {
                "papers": len(records),
                "records": len(records),
                **{s: by_split.get(s, 0) for s in SPLITS},
                "reviews": sum(len(t["reviewers"]) for t in truth),
                "human_points": sum(len(t["points"]) for t in truth),
                "skipped": len(self.skipped),
            },
            "tokens": {
                "prompt": percentiles([r["prompt_tokens"] for r in records]),
                "response": percentiles([r["response_tokens"] for r in records]),
                "paper": percentiles([r["truncation"]["paper_tokens"] for r in records]),
            },
            "truncation": {
                "prompts_truncated": sum(
                    1
                    for r in records
                    if r["truncation"]["paper_tokens_kept"] < r["truncation"]["paper_tokens"]
                ),
                "responses_truncated": sum(
                    1
                    for r in records
                    if r["truncation"]["response_items_dropped"]
                    or r["truncation"]["response_items_shortened"]
                ),
                "response_items_dropped": sum(r["truncation"]["response_items_dropped"] for r in records),
            },
            "targets": aspect_stats(records, self.config.aspect_schema),
            "inputs": [f.to_json() for f in sorted(self.inputs, key=lambda f: (f.source, f.path))],
            "skipped": [s.to_json() for s in self.skipped],
            "config": self.config.model_dump(mode="json"),
        }


def _write_jsonl(pub, name: str, rows: Iterator[dict]) -> None:
    with pub.writer(name) as out:
        for row in rows:
            out.write((json.dumps(row, ensure_ascii=False) + "\n").encode())


def _reasons(skipped: list[Skipped]) -> str:
    counts = Counter(s.reason.split(":")[0] for s in skipped)
    return "; ".join(f"{n}× {reason}" for reason, n in counts.most_common(5)) or "nothing found"


def build_dataset(
    config: BuildConfig, store_settings: StoreSettings | None = None, progress: ProgressSink | None = None
) -> BuildResult:
    """Build (or find, when identical) the dataset `config` describes."""
    return DatasetBuild(config, store_settings, progress).run()
