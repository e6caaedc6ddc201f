"""Settings: one pydantic-settings model per process, read from `REVIEWSTACK_*` variables and flags.

Services compose the pieces below into their own settings class (one class, one place). Secrets are
`SecretStr` so they never reach a log line, and each may come from a mounted file instead of the
environment (Kubernetes Secrets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from reviewstack.common.llm_endpoints import LLMEndpoint, check_endpoints

ENV_PREFIX = "REVIEWSTACK_"


class BaseReviewStackSettings(BaseSettings):
    """Shared model config: env prefix, unknown keys rejected, flags allowed to override env."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)


def entry_point_config(program: str) -> SettingsConfigDict:
    """The model config of a server's settings: the environment, then `--kebab-case` flags of `program`."""
    return SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        cli_parse_args=True,
        cli_prog_name=program,
        cli_kebab_case=True,
    )


class LoggingSettings(BaseReviewStackSettings):
    """How the process logs."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="minimum level logged"
    )
    log_format: Literal["console", "json"] = Field(
        "console", description="console for people, json for log collectors (set by the Helm chart)"
    )


class StoreSettings(BaseReviewStackSettings):
    """Where artifacts live and how to reach an S3 endpoint."""

    store: str = Field(
        "./reviewstack-store",
        description="artifact store URI: a directory path, file:///dir, or s3://bucket[/prefix]",
    )
    s3_endpoint: str = Field("", description="S3 endpoint host[:port] or URL (MinIO: minio:9000)")
    s3_access_key: SecretStr | None = Field(None, description="S3 access key id")
    s3_secret_key: SecretStr | None = Field(None, description="S3 secret key")
    s3_secure: bool = Field(False, description="use TLS to reach the S3 endpoint")
    s3_region: str = Field("", description="S3 region, if the endpoint needs one")
    s3_create_bucket: bool = Field(False, description="create the bucket when it does not exist")
    store_claim_ttl_s: float = Field(
        120.0, gt=0, description="an S3 publication claim not refreshed for this long is a dead writer's"
    )
    store_claim_wait_s: float = Field(
        600.0, ge=0, description="how long a publisher waits for another one committing the same prefix"
    )
    store_staging_ttl_s: float = Field(
        86_400.0, gt=0, description="staged files of a writer idle this long are collected as garbage"
    )


class ServerSettings(LoggingSettings, StoreSettings):
    """Everything the gRPC bootstrap needs; each service subclasses it with its own fields."""

    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 = pick a free port)")
    auth_token: SecretStr | None = Field(None, description="bearer token clients must send; unset = no auth")
    auth_token_file: Path | None = Field(
        None, description="file holding the bearer token (a mounted Secret); re-read when it changes"
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port (0 = off)")
    default_deadline_s: float = Field(
        60.0, gt=0, description="deadline applied to unary calls whose client set none"
    )
    shutdown_grace_s: float = Field(10.0, ge=0, description="time in-flight calls get on SIGTERM")
    max_pending_operations: int = Field(
        16, ge=1, description="long-running operations waiting to run; RESOURCE_EXHAUSTED beyond"
    )


class ReadOnlyRootsSettings(BaseReviewStackSettings):
    """Places besides the store that requests may name as raw inputs (papers, review folders, CSVs)."""

    read_only_roots: list[str] = Field(
        default_factory=list,
        description="directories or s3:// URIs (reached with the store's credentials) that requests may "
        "read raw inputs from; the store itself is always readable",
    )


class LLMEndpointSettings(BaseReviewStackSettings):
    """The OpenAI-compatible endpoints a service may call, by name (see reviewstack.common.llm_endpoints)."""

    llm_endpoints: dict[str, LLMEndpoint] = Field(
        default_factory=dict,
        description='JSON: {"name": {"url": ..., "model": ..., "api_key_file": ...}}; requests pick by name',
    )

    @field_validator("llm_endpoints")
    @classmethod
    def _names(cls, value: dict[str, LLMEndpoint]) -> dict[str, LLMEndpoint]:
        return dict(check_endpoints(value))


class EmbeddedModelSettings(BaseReviewStackSettings):
    """Where the embedded default model (SmolLM2-135M-Instruct) is materialised from its package."""

    embedded_model_dir: Path | None = Field(
        None,
        description="directory of the materialised embedded model "
        "(default <venv>/share/reviewstack/models/smollm2-135m-instruct)",
    )
