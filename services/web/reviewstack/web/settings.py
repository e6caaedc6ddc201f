"""The web page's settings (env `REVIEWSTACK_*` or flags), one class like every service's."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from reviewstack.common.settings import LoggingSettings, StoreSettings, entry_point_config

# gRPC's default receive limit on the Review service is 4 MiB for the whole request: the paper's bytes
# travel inside it, so an upload must leave room for the rest of the message
MAX_UPLOAD_BYTES = 4 * 2**20 - 64 * 2**10


class WebSettings(LoggingSettings, StoreSettings):
    """What the page serves, which services it calls, and who may use it."""

    model_config = entry_point_config("reviewstack-web")

    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (0 = pick a free port)")
    review_services: dict[str, str] = Field(
        default_factory=dict,
        description='JSON {"system name": "host:port"}: the Review services people can pick from, one per '
        "served model; the page calls no other",
    )
    evaluation_service: str = Field(
        "", description="the Evaluation service (host:port) that compares systems on a paper; empty = off"
    )
    grpc_token: SecretStr | None = Field(
        None,
        description="bearer token of the gRPC services (their REVIEWSTACK_AUTH_TOKEN); stays server-side",
    )
    grpc_token_file: Path | None = Field(
        None, description="file holding the gRPC services' token (a mounted Secret); re-read when it changes"
    )
    login: Literal["token", "proxy"] = Field(
        "token",
        description="token: people log in with login_token; proxy: an authenticating proxy in front "
        "(ingress auth) already let them in, and the page asks for nothing",
    )
    login_token: SecretStr | None = Field(None, description="what people type to log in (login=token)")
    login_token_file: Path | None = Field(
        None, description="file holding the login token (a mounted Secret); re-read when it changes"
    )
    session_secret: SecretStr | None = Field(
        None,
        description="key that signs session cookies; unset = a random one per process (sessions end at a "
        "restart, and replicas cannot share them)",
    )
    session_secret_file: Path | None = Field(None, description="file holding session_secret (a Secret)")
    session_max_age_s: int = Field(8 * 3600, ge=60, le=30 * 86400, description="a session lasts this long")
    secure_cookies: bool = Field(False, description="cookies only over HTTPS (set it behind a TLS ingress)")
    max_upload_bytes: int = Field(
        2 * 2**20,  # 2 MiB: a PDF with figures; Markdown papers are a few hundred KB
        ge=1024,
        le=MAX_UPLOAD_BYTES,
        description="largest paper file accepted, in bytes (413 beyond)",
    )
    max_reviews_in_flight: int = Field(
        8, ge=1, le=1024, description="reviews this process streams at once; 503 beyond"
    )
    review_timeout_s: float = Field(900.0, gt=0, le=3600, description="longest a review may take")
    refusal_penalty_max: float = Field(10.0, ge=0, le=100, description="largest λ the form offers")

    @field_validator("review_services")
    @classmethod
    def _targets(cls, value: dict[str, str]) -> dict[str, str]:
        for name, target in value.items():
            if not name.strip() or len(name) > 64:
                raise ValueError(f"system name {name!r} must be 1-64 characters")
            if "://" in target or ":" not in target:
                raise ValueError(f"system {name!r}: {target!r} must be host:port (a gRPC target)")
        return value
