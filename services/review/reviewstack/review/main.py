"""reviewstack-review: the Review gRPC service.

Run book:
    reviewstack-review --backend-url http://127.0.0.1:8080             # the embedded engine, port 50051
    REVIEWSTACK_BACKEND_URL=http://tgi:80 REVIEWSTACK_BACKEND_REFUSAL_PENALTY=0.5 \\
    REVIEWSTACK_TOKENIZER=/models/reviewer-v1 reviewstack-review --port 50051

Every setting is a `REVIEWSTACK_*` variable or the same-named flag (`--help`). The tokenizer must be the
served model's: it counts the prompt and applies the chat template the model was trained with.
"""

from __future__ import annotations

from pydantic import Field

from reviewstack.common.grpc import GrpcServer, ServiceRegistration, run_server
from reviewstack.common.logging import get_logger
from reviewstack.common.prompt import MAX_PROMPT_LENGTH, MAX_RESPONSE_LENGTH
from reviewstack.common.settings import ServerSettings, entry_point_config
from reviewstack.common.store import open_store
from reviewstack.common.tokenizer import load_tokenizer
from reviewstack.review.backend import Backend
from reviewstack.review.reviewer import MAX_REPETITION_PENALTY, Reviewer, ReviewLimits
from reviewstack.review.service import ReviewServicer
from reviewstack.v1 import review_pb2, review_pb2_grpc

SERVICE = review_pb2.DESCRIPTOR.services_by_name["Review"].full_name
log = get_logger(__name__)


class ReviewSettings(ServerSettings):
    """The Review server's settings (env `REVIEWSTACK_*` or flags)."""

    model_config = entry_point_config("reviewstack-review")

    backend_url: str = Field("http://127.0.0.1:8080", description="TGI-protocol generation backend")
    backend_timeout_s: float = Field(900.0, gt=0, description="longest a backend call may take")
    backend_retries: int = Field(3, ge=0, description="retries when the backend cannot be reached")
    backend_refusal_penalty: float = Field(
        0.0, ge=0, description="λ a TGI backend applies to every request (its REVIEWSTACK_REFUSAL_PENALTY)"
    )
    tokenizer: str | None = Field(
        None, description="the served model's tokenizer directory (default Llama-3)"
    )
    served_model: str | None = Field(
        None,
        description="what the lineage names as the model, e.g. the run's store key runs/<id>/merged "
        "(default: the backend's model id, which for TGI is only its local model directory)",
    )
    max_prompt_length: int = Field(MAX_PROMPT_LENGTH, ge=64, description="papers are cut to fit this")
    max_new_tokens: int = Field(MAX_RESPONSE_LENGTH, ge=1, description="longest review, in tokens")
    refusal_penalty: float = Field(0.0, ge=0, description="λ when a request names none")
    refusal_penalty_max: float = Field(10.0, ge=0, description="largest λ a request may ask for")
    repetition_penalty: float = Field(
        1.0,
        gt=0,
        le=MAX_REPETITION_PENALTY,
        description="TGI repetition penalty when a request names none (1 = off)",
    )
    max_in_flight: int = Field(64, ge=1, description="reviews written at once; RESOURCE_EXHAUSTED beyond")


def build_servicer(settings: ReviewSettings) -> ReviewServicer:
    limits = ReviewLimits(
        max_prompt_length=settings.max_prompt_length,
        max_new_tokens=settings.max_new_tokens,
        refusal_penalty=settings.refusal_penalty,
        refusal_penalty_max=settings.refusal_penalty_max,
        backend_refusal_penalty=settings.backend_refusal_penalty,
        repetition_penalty=settings.repetition_penalty,
        served_model=settings.served_model,
    )
    backend = Backend(settings.backend_url, settings.backend_timeout_s, settings.backend_retries)
    reviewer = Reviewer(
        load_tokenizer(settings.tokenizer), backend, limits, open_store(settings.store, settings)
    )
    return ReviewServicer(reviewer, settings.max_in_flight)


def main() -> None:
    settings = ReviewSettings()
    registration = ServiceRegistration(
        SERVICE, review_pb2_grpc.add_ReviewServicer_to_server, build_servicer(settings)
    )

    def ready(server: GrpcServer) -> None:
        log.info("review serving", port=server.port, backend=settings.backend_url)

    run_server(settings, [registration], None, on_started=ready)


if __name__ == "__main__":
    main()
