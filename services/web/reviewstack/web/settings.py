"""The web page's settings (env `REVIEWSTACK_*` or flags), one class like every service's."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from reviewstack.common.settings import LoggingSettings, StoreSettings, entry_point_config

# gRPC's default receive limit on the Review service is 4 MiB for the whole request: the paper's bytes
# travel inside it, so an upload must leave room for the rest of the message
MAX_UPLOAD_BYTES = 4 * 2**20 - 64 * 2**10


class ServedSystem(BaseModel):
    """A system people can pick: a Review service, and the decoding its model is meant to be read with
    (the one its evaluation used; the page sends it with every request, λ being the person's choice)."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="the Review service, host:port")
    temperature: float = Field(0.0, ge=0, le=5, description="0 = greedy")
    top_p: float = Field(0.0, ge=0, le=1, description="nucleus sampling mass; 0 = off")
    repetition_penalty: float | None = Field(None, gt=0, le=3, description="unset = the service's default")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="sampling seed: a rerun writes the same")

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if "://" in value or ":" not in value or not value.rsplit(":", 1)[1].isdigit():
            raise ValueError(f"{value!r} must be host:port (a gRPC target)")
        return value


class WebSettings(LoggingSettings, StoreSettings):
    """What the page serves, which services it calls, and who may use it."""

    model_config = entry_point_config("reviewstack-web")

    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (0 = pick a free port)")
    review_services: dict[str, ServedSystem | str] = Field(
        default_factory=dict,
        description='JSON {"system name": "host:port"} or {"system name": {"target": "host:port", '
        '"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1, "seed": 0}}: the Review services '
        "people can pick from, one per served model, with its decoding; the page calls no other",
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
    def _systems(cls, value: dict[str, ServedSystem | str]) -> dict[str, ServedSystem]:
        systems = {}
        for name, system in value.items():
            if not name.strip() or len(name) > 64:
                raise ValueError(f"system name {name!r} must be 1-64 characters")
            systems[name] = ServedSystem(target=system) if isinstance(system, str) else system
        return systems
