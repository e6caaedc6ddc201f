"""reviewstack-evaluation: the Evaluation gRPC service.

Run book:
    reviewstack-evaluation                        # port 50051, store ./reviewstack-store, no auth
    REVIEWSTACK_STORE=s3://reviewstack REVIEWSTACK_S3_ENDPOINT=minio:9000 \\
    REVIEWSTACK_LLM_ENDPOINTS='{"judge": {"url": "http://tgi:8080/v1", "model": "judge"}}' \\
    REVIEWSTACK_JUDGE=judge reviewstack-evaluation

Every setting is a `REVIEWSTACK_*` variable or the same-named flag (`--help` lists them). The service
reports SERVING on grpc.health.v1 once the default matcher's model is loaded, so a readiness probe never
routes an evaluation to a replica that would spend its first seconds loading.
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
from reviewstack.evaluation.service import EvaluationServicer, RequestPolicy
from reviewstack.v1 import evaluation_pb2, evaluation_pb2_grpc

SERVICE = evaluation_pb2.DESCRIPTOR.services_by_name["Evaluation"].full_name
log = get_logger(__name__)


class EvaluationSettings(ServerSettings, ReadOnlyRootsSettings, LLMEndpointSettings):
    """The Evaluation server's settings (env `REVIEWSTACK_*` or flags)."""

    model_config = entry_point_config("reviewstack-evaluation")

    judge: str = Field("", description="the LLM judge (a name in llm_endpoints) when a request names none")
    max_bootstrap: int = Field(10_000, ge=1, description="bootstrap resamples a request may ask for")
    max_systems: int = Field(32, ge=1, description="systems one evaluation may compare")
    max_concurrent_evaluations: int = Field(1, ge=1, description="run at once; more wait as PENDING")
    preload: bool = Field(True, description="load the default matcher's model before reporting SERVING")


def request_policy(settings: EvaluationSettings) -> RequestPolicy:
    """What requests may name: the store, the read-only roots, the configured judges, bounded work."""
    return RequestPolicy(
        scope=StoreScope.configured(settings, settings.read_only_roots),
        llm_endpoints=settings.llm_endpoints,
        default_judge=settings.judge,
        max_bootstrap=settings.max_bootstrap,
        max_systems=settings.max_systems,
    )


def _preload() -> None:
    from reviewstack.evaluation.matching import default_matcher

    default_matcher()


def main() -> None:
    settings = EvaluationSettings()
    operations = OperationRegistry(
        max_workers=settings.max_concurrent_evaluations, max_pending=settings.max_pending_operations
    )
    servicer = EvaluationServicer(settings, operations, request_policy(settings))
    registration = ServiceRegistration(
        SERVICE, evaluation_pb2_grpc.add_EvaluationServicer_to_server, servicer
    )

    async def ready(server: GrpcServer) -> None:
        if settings.preload:
            server.set_serving(SERVICE, False)
            await asyncio.to_thread(_preload)
            server.set_serving(SERVICE, True)
        log.info("evaluation serving", port=server.port, store=settings.store)

    run_server(settings, [registration], operations, on_started=ready)


if __name__ == "__main__":
    main()
