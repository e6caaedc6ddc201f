"""The LLM endpoints a service may call, as its operator configured them, each with its own key.

A service holds API keys that its callers do not. If a request could name the URL, any token holder
could send those keys to a host of their choosing, or make the service reach hosts inside the cluster.
So the operator lists the endpoints by name (`REVIEWSTACK_LLM_ENDPOINTS`, or the chart's
`llmEndpoints`), each with the key it takes, and a request picks one by name. The CLI without
`--server` builds an endpoint from its flags: the person at the keyboard is the operator there.

    REVIEWSTACK_LLM_ENDPOINTS='{"gpt4": {"url": "https://api.openai.com/v1", "model": "gpt-4o",
                                          "api_key_file": "/var/run/secrets/llm/gpt4/api-key"}}'
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reviewstack.common.errors import FailedPrecondition, InvalidArgument, NotFound

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$")  # a DNS label: it names a Secret volume
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class LLMEndpoint(BaseModel):
    """One OpenAI-compatible endpoint (OpenAI, vLLM, TGI's /v1, the embedded engine) and its key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="OpenAI base URL, e.g. https://api.openai.com/v1 or http://vllm:8000/v1")
    model: str = Field(min_length=1, description="the model name the endpoint expects")
    api_key_file: Path | None = Field(
        None, description="file holding the API key (a mounted Secret); read at each use, so it rotates"
    )
    api_key_env: str | None = Field(None, description="environment variable holding the API key")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL (e.g. https://api.openai.com/v1)")
        if parts.query or parts.fragment:
            raise ValueError(f"{value!r} must not carry '?' or '#' parts")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> LLMEndpoint:
        if self.api_key_file is not None and self.api_key_env is not None:
            raise ValueError("set api_key_file or api_key_env, not both")
        return self

    def api_key(self) -> str | None:
        """The key, read now (a rotated Secret takes effect at the next call); None when it takes none."""
        if self.api_key_file is not None:
            try:
                key = self.api_key_file.read_text().strip()
            except OSError as exc:
                raise FailedPrecondition(
                    f"cannot read the API key of {self.public_url} from {self.api_key_file}: "
                    f"{exc.strerror or exc}; check the Secret mounted there"
                ) from exc
            return key or None
        if self.api_key_env is not None:
            return os.environ.get(self.api_key_env) or None
        return None

    @property
    def public_url(self) -> str:
        """The URL as lineage and logs record it: without user:password (some gateways take keys there)."""
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def check_endpoints(endpoints: Mapping[str, LLMEndpoint]) -> Mapping[str, LLMEndpoint]:
    """Validate the names of a settings' endpoint table (they appear in requests and metrics)."""
    for name in endpoints:
        if not _NAME.match(name):
            raise ValueError(
                f"LLM endpoint name {name!r}: use lower-case letters, digits and '-' (at most 42, no '-' at "
                "either end)"
            )
    return endpoints


def pick_endpoint(
    endpoints: Mapping[str, LLMEndpoint], name: str, *, default: str = "", what: str = "LLM endpoint"
) -> LLMEndpoint:
    """The endpoint a request names (or the service's default): never one the operator did not list."""
    chosen = (name or "").strip() or default
    if not chosen:
        configured = ", ".join(sorted(endpoints)) or "none is configured"
        raise InvalidArgument(f"name the {what} to use ({configured})")
    if "://" in chosen or "/" in chosen:
        raise InvalidArgument(
            f"{what} {chosen!r} looks like a URL: a request names one of the endpoints this service's "
            "operator configured (REVIEWSTACK_LLM_ENDPOINTS / the chart's llmEndpoints), never a URL"
        )
    try:
        return endpoints[chosen]
    except KeyError:
        configured = ", ".join(sorted(endpoints)) or "none"
        raise NotFound(
            f"no {what} named {chosen!r} on this service (configured: {configured}); ask its operator to "
            "add it to REVIEWSTACK_LLM_ENDPOINTS (the chart's llmEndpoints)"
        ) from None
