"""The DataPrep gRPC servicer: thin decode → call → encode over `build.DatasetBuild`.

BuildDataset runs the build's preflight inside the RPC, so a missing source folder or an unwritable
output is the RPC's own error (NOT_FOUND, FAILED_PRECONDITION …) before any operation starts; the rest
runs as a long-running operation whose progress clients watch through the Operations service.

A request is resolved against `RequestPolicy` first: its sources and output must lie inside the server's
store (or, for sources, the operator's read-only roots), and it names LLM endpoints and tokenizers the
operator configured rather than giving URLs or paths (PERMISSION_DENIED / NOT_FOUND otherwise).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.errors import InvalidArgument, NotFound
from reviewstack.common.grpc import OperationRegistry, ProgressReporter
from reviewstack.common.llm_endpoints import LLMEndpoint, pick_endpoint
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import ArtifactStore, check_prefix, open_store
from reviewstack.common.store.scope import StoreScope
from reviewstack.dataprep.build import BuildResult, DatasetBuild
from reviewstack.dataprep.config import BuildConfig, PaperVersionMode
from reviewstack.v1 import common_pb2, dataprep_pb2, dataprep_pb2_grpc, operations_pb2

BUILD_KIND = "reviewstack.v1.DataPrep/BuildDataset"

_MODES = {
    dataprep_pb2.PAPER_VERSION_MODE_EARLY: PaperVersionMode.EARLY,
    dataprep_pb2.PAPER_VERSION_MODE_LATE: PaperVersionMode.LATE,
    dataprep_pb2.PAPER_VERSION_MODE_DECISION: PaperVersionMode.DECISION,
}
_SCHEMAS = {common_pb2.ASPECT_SCHEMA_FOUR: AspectSchema.FOUR}


@dataclass(frozen=True)
class RequestPolicy:
    """What a request may name on this server: places inside its store (and read-only roots), the LLM
    endpoints and tokenizers its operator configured — each by name, never by URL or path."""

    scope: StoreScope
    llm_endpoints: Mapping[str, LLMEndpoint] = field(default_factory=dict)
    default_llm: str = ""
    tokenizers: Mapping[str, str] = field(default_factory=dict)
    default_tokenizer: str | None = None
    max_sources: int = 64  # source folders of one build: each is listed and read in full

    def tokenizer(self, name: str) -> str | None:
        if not name:
            return self.default_tokenizer
        if "/" in name or name.startswith((".", "~")):
            raise InvalidArgument(
                f"tokenizer {name!r} looks like a path: name one of the tokenizers this server's operator "
                f"configured ({', '.join(sorted(self.tokenizers)) or 'none'}), or leave it empty"
            )
        try:
            return self.tokenizers[name]
        except KeyError:
            raise NotFound(
                f"no tokenizer named {name!r} on this server (configured: "
                f"{', '.join(sorted(self.tokenizers)) or 'none'}); leave it empty for the default"
            ) from None


def request_to_config(
    request: dataprep_pb2.BuildDatasetRequest, policy: RequestPolicy
) -> tuple[BuildConfig, LLMEndpoint | None]:
    """The build a request asks for, every location resolved inside what this server may touch; with
    the LLM endpoint (and its key) when the request picked the LLM distiller."""
    if request.paper_version not in _MODES:
        raise InvalidArgument(
            "paper_version is required: EARLY, LATE or DECISION (whether the paper texts "
            "are the reviewed or the camera-ready versions changes what the model learns)"
        )
    if len(request.sources) > policy.max_sources:
        raise InvalidArgument(
            f"{len(request.sources)} sources: one build reads at most {policy.max_sources} "
            "(REVIEWSTACK_MAX_SOURCES); merge folders or build in parts"
        )
    split = request.split
    shares = (
        (split.train, split.val, split.test) if (split.train or split.val or split.test) else (0.8, 0.1, 0.1)
    )
    llm = None
    if request.distiller.kind == dataprep_pb2.DistillerSpec.KIND_LLM:
        llm = pick_endpoint(
            policy.llm_endpoints, request.distiller.endpoint, default=policy.default_llm, what="distiller"
        )
    scope = policy.scope
    fields = {
        "sources": [scope.location(s, what=f"sources[{i}]") for i, s in enumerate(request.sources)],
        "name": request.name,
        "output": scope.location(request.output or scope.store.uri, what="output", write=True),
        "paper_version": _MODES[request.paper_version],
        "aspect_schema": _SCHEMAS.get(request.aspect_schema, AspectSchema.SEVEN),
        "distiller": "llm" if llm else "embedded",
        "llm_endpoint": llm.public_url if llm else "",
        "llm_model": llm.model if llm else "",
        "split": shares,
        "seed": split.seed,
        "tokenizer": policy.tokenizer(request.tokenizer),
        "version": request.version or None,
        "overwrite": request.overwrite,
        "drop_appendix": request.drop_appendix,
    }
    if request.max_prompt_length:
        fields["max_prompt_length"] = request.max_prompt_length
    if request.max_response_length:
        fields["max_response_length"] = request.max_response_length
    return BuildConfig(**fields), llm  # a ValidationError becomes INVALID_ARGUMENT in the bootstrap


def config_to_request(config: BuildConfig, llm_endpoint: str = "") -> dataprep_pb2.BuildDatasetRequest:
    """The inverse of `request_to_config`, for clients (the CLI's --server mode): `llm_endpoint` is the
    name of one of the server's endpoints (a server takes no URL)."""
    mode = {v: k for k, v in _MODES.items()}[config.paper_version]
    return dataprep_pb2.BuildDatasetRequest(
        sources=config.sources,
        name=config.name,
        output=config.output,
        paper_version=mode,
        aspect_schema=(
            common_pb2.ASPECT_SCHEMA_FOUR
            if config.aspect_schema is AspectSchema.FOUR
            else common_pb2.ASPECT_SCHEMA_SEVEN
        ),
        distiller=dataprep_pb2.DistillerSpec(
            kind=(
                dataprep_pb2.DistillerSpec.KIND_LLM
                if config.distiller == "llm"
                else dataprep_pb2.DistillerSpec.KIND_EMBEDDED
            ),
            endpoint=llm_endpoint,
        ),
        max_prompt_length=config.max_prompt_length,
        max_response_length=config.max_response_length,
        split=dataprep_pb2.SplitSpec(
            train=config.split[0], val=config.split[1], test=config.split[2], seed=config.seed
        ),
        tokenizer=config.tokenizer or "",
        version=config.version or "",
        overwrite=config.overwrite,
        drop_appendix=config.drop_appendix,
    )


def result_to_pb(result: BuildResult) -> dataprep_pb2.BuildDatasetResult:
    return dataprep_pb2.BuildDatasetResult(
        name=result.name,
        version=result.version,
        uri=result.uri,
        manifest=result.manifest_ref.to_pb(),
        split_counts=result.split_counts,
        skipped=[dataprep_pb2.SkippedInput(**s) for s in result.skipped],
    )


def _info(store_uri: str, manifest: dict, manifest_ref) -> dataprep_pb2.DatasetInfo:
    counts = manifest.get("counts", {})
    return dataprep_pb2.DatasetInfo(
        name=manifest.get("name", ""),
        version=manifest.get("version", ""),
        uri=store_uri,
        manifest=manifest_ref.to_pb(),
        split_counts={s: int(counts.get(s, 0)) for s in ("train", "val", "test")},
    )


class _OperationProgress:
    """The build's progress calls, forwarded to the operation clients watch."""

    def __init__(self, reporter: ProgressReporter) -> None:
        self._reporter = reporter

    def update(self, stage: str, done: int = 0, total: int = 0, message: str = "") -> None:
        self._reporter.update(stage=stage, done=done, total=total, message=message)

    def check_cancelled(self) -> None:
        self._reporter.check_cancelled()


class DataPrepServicer(dataprep_pb2_grpc.DataPrepServicer):
    def __init__(
        self, store_settings: StoreSettings, operations: OperationRegistry, policy: RequestPolicy
    ) -> None:
        self.store_settings = store_settings
        self.operations = operations
        self.policy = policy

    async def BuildDataset(
        self, request: dataprep_pb2.BuildDatasetRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        # a retried request returns its operation without repeating the preflight
        if (existing := self.operations.find(BUILD_KIND, request.request_id)) is not None:
            return existing
        config, llm = request_to_config(request, self.policy)
        build = DatasetBuild(config, self.store_settings, llm=llm)
        await asyncio.to_thread(build.preflight)

        def work(reporter: ProgressReporter) -> dataprep_pb2.BuildDatasetResult:
            build.progress = _OperationProgress(reporter)
            return result_to_pb(build.execute())

        return self.operations.start(BUILD_KIND, work, request_id=request.request_id)

    def _store(self, uri: str) -> ArtifactStore:
        """The store a listing request names: this server's, or a location inside it."""
        scope = self.policy.scope
        if not uri:
            return scope.store
        return open_store(scope.location(uri, what="store", write=True), self.store_settings)

    async def ListDatasets(
        self, request: dataprep_pb2.ListDatasetsRequest, context: grpc.aio.ServicerContext
    ) -> dataprep_pb2.ListDatasetsResponse:
        store = self._store(request.store)
        root = f"datasets/{check_prefix(request.name)}" if request.name else "datasets"

        def collect() -> list[dataprep_pb2.DatasetInfo]:
            prefixes = store.list_published(root)
            return [
                _info(store.uri_for(p), store.read_manifest(p), store.stat(f"{p}/manifest.json"))
                for p in sorted(prefixes)
            ]

        return dataprep_pb2.ListDatasetsResponse(datasets=await asyncio.to_thread(collect))

    async def GetDataset(
        self, request: dataprep_pb2.GetDatasetRequest, context: grpc.aio.ServicerContext
    ) -> dataprep_pb2.GetDatasetResponse:
        if not request.name or not request.version:
            raise InvalidArgument("GetDataset needs a name and a version")
        store = self._store(request.store)
        prefix = check_prefix(f"datasets/{request.name}/{request.version}")
        manifest = await asyncio.to_thread(store.read_manifest, prefix)
        ref = await asyncio.to_thread(store.stat, f"{prefix}/manifest.json")
        return dataprep_pb2.GetDatasetResponse(
            dataset=_info(store.uri_for(prefix), manifest, ref), manifest_json=json.dumps(manifest)
        )
