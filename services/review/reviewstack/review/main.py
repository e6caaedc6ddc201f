"""reviewstack-review: the Review gRPC service.

Run book:
    reviewstack-review --backend-url http://127.0.0.1:8080             # the embedded engine, port 50051
    REVIEWSTACK_BACKEND_URL=http://tgi:80 REVIEWSTACK_BACKEND_REFUSAL_PENALTY=0.5 \\
    REVIEWSTACK_TOKENIZER=/models/reviewer-v1 reviewstack-review --port 50051

Every setting is a `REVIEWSTACK_*` variable or the same-named flag (`--help`). The tokenizer must be the
served model's: it counts the prompt and applies the chat template the model was trained with. A backend
that requires a bearer token (the embedded engine with REVIEWSTACK_AUTH_TOKEN[_FILE]) gets it from
REVIEWSTACK_BACKEND_AUTH_TOKEN or REVIEWSTACK_BACKEND_AUTH_TOKEN_FILE (a mounted Secret, re-read on change).

Inline papers (`paper.text`, `paper.file`) are bounded first by gRPC's message size (4 MiB: the server
keeps grpc's default receive limit), artifacts by `max_paper_bytes`, and every paper's text by
`max_paper_chars` before it is cleaned and tokenized.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from reviewstack.common import errors
from reviewstack.common.grpc import GrpcServer, ServiceRegistration, run_server
from reviewstack.common.grpc.auth import TokenSource
from reviewstack.common.logging import configure_logging, get_logger
from reviewstack.common.prompt import MAX_PROMPT_LENGTH, MAX_RESPONSE_LENGTH
from reviewstack.common.settings import ServerSettings, entry_point_config
from reviewstack.common.store import open_store
from reviewstack.common.tokenizer import load_tokenizer
from reviewstack.review.backend import Backend
from reviewstack.review.reviewer import (
    MAX_PAPER_BYTES,
    MAX_PAPER_CHARS,
    MAX_REPETITION_PENALTY,
    Reviewer,
    ReviewLimits,
)
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
    backend_auth_token: SecretStr | None = Field(
        None,
        description="bearer token the backend requires (the engine's REVIEWSTACK_AUTH_TOKEN); unset = none",
    )
    backend_auth_token_file: Path | None = Field(
        None,
        description="file holding the backend's bearer token (a mounted Secret); re-read when it changes",
    )
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
    max_paper_bytes: int = Field(
        MAX_PAPER_BYTES,
        ge=1024,
        description="largest paper file or artifact read, in bytes; INVALID_ARGUMENT beyond",
    )
    max_paper_chars: int = Field(
        MAX_PAPER_CHARS,
        ge=1000,
        description="longest paper text cleaned and tokenized; INVALID_ARGUMENT beyond",
    )


def backend_tokens(settings: ReviewSettings) -> TokenSource:
    """The backend's token, read as the services read their own (a file is read now: a missing Secret
    stops the service before it serves)."""
    return TokenSource.of(settings.backend_auth_token, settings.backend_auth_token_file, "backend_auth_token")


def build_servicer(settings: ReviewSettings) -> ReviewServicer:
    limits = ReviewLimits(
        max_prompt_length=settings.max_prompt_length,
        max_new_tokens=settings.max_new_tokens,
        refusal_penalty=settings.refusal_penalty,
        refusal_penalty_max=settings.refusal_penalty_max,
        backend_refusal_penalty=settings.backend_refusal_penalty,
        repetition_penalty=settings.repetition_penalty,
        served_model=settings.served_model,
        max_paper_bytes=settings.max_paper_bytes,
        max_paper_chars=settings.max_paper_chars,
    )
    backend = Backend(
        settings.backend_url,
        settings.backend_timeout_s,
        settings.backend_retries,
        tokens=backend_tokens(settings),
    )
    reviewer = Reviewer(
        load_tokenizer(settings.tokenizer), backend, limits, open_store(settings.store, settings)
    )
    return ReviewServicer(reviewer, settings.max_in_flight)


def main() -> None:
    settings = ReviewSettings()
    try:
        servicer = build_servicer(settings)
    except errors.ReviewStackError as exc:  # e.g. an unreadable token file: one line, exit 2
        configure_logging(settings.log_level, settings.log_format)
        log.error("cannot start the server", error=str(exc))
        raise SystemExit(2) from None
    registration = ServiceRegistration(SERVICE, review_pb2_grpc.add_ReviewServicer_to_server, servicer)

    def ready(server: GrpcServer) -> None:
        log.info("review serving", port=server.port, backend=settings.backend_url)

    run_server(settings, [registration], None, on_started=ready)


if __name__ == "__main__":
    main()
