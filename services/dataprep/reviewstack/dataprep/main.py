"""reviewstack-dataprep: the DataPrep gRPC service.

Run book:
    reviewstack-dataprep                          # port 50051, store ./reviewstack-store, no auth
    REVIEWSTACK_STORE=s3://reviewstack REVIEWSTACK_S3_ENDPOINT=minio:9000 \\
    REVIEWSTACK_AUTH_TOKEN_FILE=/var/run/secrets/reviewstack/token reviewstack-dataprep --port 50051

Every setting is a `REVIEWSTACK_*` variable or the same-named flag (`--help` lists them). The service
reports SERVING on grpc.health.v1 once the tokenizer and the embedding model are loaded, so a readiness
probe never routes a build to a replica that would spend its first minute loading.
"""

from __future__ import annotations

import asyncio

from pydantic import Field

from reviewstack.common.grpc import GrpcServer, OperationRegistry, ServiceRegistration, run_server
from reviewstack.common.logging import get_logger
from reviewstack.common.settings import (
    LLMEndpointSettings,
    ReadOnlyRootsSettings,
    ServerSettings,
    entry_point_config,
)
from reviewstack.common.store.scope import StoreScope
from reviewstack.dataprep.service import DataPrepServicer, RequestPolicy
from reviewstack.v1 import dataprep_pb2, dataprep_pb2_grpc

SERVICE = dataprep_pb2.DESCRIPTOR.services_by_name["DataPrep"].full_name
log = get_logger(__name__)


class DataPrepSettings(ServerSettings, ReadOnlyRootsSettings, LLMEndpointSettings):
    """The DataPrep server's settings (env `REVIEWSTACK_*` or flags)."""

    model_config = entry_point_config("reviewstack-dataprep")

    tokenizer: str | None = Field(None, description="default tokenizer directory (default: the Llama-3 one)")
    tokenizers: dict[str, str] = Field(
        default_factory=dict, description="JSON: tokenizer name → directory, that requests may pick by name"
    )
    distiller_endpoint: str = Field(
        "", description="the llm distiller's endpoint (a name in llm_endpoints) when a request names none"
    )
    max_concurrent_builds: int = Field(1, ge=1, description="builds run at once; more wait as PENDING")
    max_sources: int = Field(64, ge=1, description="source folders one build may read")
    preload: bool = Field(True, description="load tokenizer and embedding model before reporting SERVING")


def request_policy(settings: DataPrepSettings) -> RequestPolicy:
    """What requests may name: the store, the read-only roots, the endpoints and tokenizers configured."""
    return RequestPolicy(
        scope=StoreScope.configured(settings, settings.read_only_roots),
        llm_endpoints=settings.llm_endpoints,
        default_llm=settings.distiller_endpoint,
        tokenizers=settings.tokenizers,
        default_tokenizer=settings.tokenizer,
        max_sources=settings.max_sources,
    )


def _preload(tokenizer: str | None) -> None:
    from reviewstack.common.embeddings import load_embedding_model
    from reviewstack.common.tokenizer import load_tokenizer

    load_tokenizer(tokenizer)
    load_embedding_model()


def main() -> None:
    settings = DataPrepSettings()
    operations = OperationRegistry(
        max_workers=settings.max_concurrent_builds, max_pending=settings.max_pending_operations
    )
    servicer = DataPrepServicer(settings, operations, request_policy(settings))
    registration = ServiceRegistration(SERVICE, dataprep_pb2_grpc.add_DataPrepServicer_to_server, servicer)

    async def ready(server: GrpcServer) -> None:
        if settings.preload:
            server.set_serving(SERVICE, False)
            await asyncio.to_thread(_preload, settings.tokenizer)
            server.set_serving(SERVICE, True)
        log.info("dataprep serving", port=server.port, store=settings.store)

    run_server(settings, [registration], operations, on_started=ready)


if __name__ == "__main__":
    main()
