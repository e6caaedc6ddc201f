"""reviewstack-training: the Training gRPC service (training controller).

Run book:
    reviewstack-training                                   # local launcher, port 50051, no auth
    REVIEWSTACK_LAUNCHER=kubernetes REVIEWSTACK_K8S_IMAGE=registry/review-stack/training-job:0.1.0 \\
    REVIEWSTACK_K8S_NODE_SELECTOR='{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}' \\
    REVIEWSTACK_STORE=s3://reviewstack REVIEWSTACK_S3_ENDPOINT=minio:9000 \\
    REVIEWSTACK_AUTH_TOKEN_FILE=/var/run/secrets/reviewstack/token reviewstack-training --port 50051

Every setting is a `REVIEWSTACK_*` variable or the same-named flag (`--help` lists them); the
launcher's are documented in reviewstack/training/settings.py. On SIGTERM the server drains; local
runs are stopped (they checkpoint first), Kubernetes Jobs keep running.
"""

from __future__ import annotations

from pydantic import Field

from reviewstack.common.grpc import GrpcServer, ServiceRegistration, run_server
from reviewstack.common.logging import get_logger
from reviewstack.common.settings import ServerSettings, entry_point_config
from reviewstack.common.store.scope import StoreScope
from reviewstack.training.controller import TrainingController
from reviewstack.training.launchers import make_launcher
from reviewstack.training.service import RequestPolicy, TrainingServicer
from reviewstack.training.settings import LauncherSettings
from reviewstack.v1 import training_pb2, training_pb2_grpc

SERVICE = training_pb2.DESCRIPTOR.services_by_name["Training"].full_name
log = get_logger(__name__)


class TrainingSettings(ServerSettings, LauncherSettings):
    """The Training server's settings (env `REVIEWSTACK_*` or flags)."""

    model_config = entry_point_config("reviewstack-training")

    base_model_roots: list[str] = Field(
        default_factory=list,
        description="directories a run's base_model may lie under (in the job's container for the "
        "kubernetes launcher); a run naming another is PERMISSION_DENIED",
    )


def main() -> None:
    settings = TrainingSettings()
    controller = TrainingController(settings, make_launcher(settings))
    policy = RequestPolicy(StoreScope.configured(settings), settings.base_model_roots)
    registration = ServiceRegistration(
        SERVICE, training_pb2_grpc.add_TrainingServicer_to_server, TrainingServicer(controller, policy)
    )

    def ready(server: GrpcServer) -> None:
        log.info("training serving", port=server.port, launcher=settings.launcher, store=settings.store)

    run_server(settings, [registration], controller.operations, on_started=ready)


if __name__ == "__main__":
    main()
