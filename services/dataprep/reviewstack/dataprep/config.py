"""What a dataset build is asked to do: one validated model shared by the CLI and the gRPC service."""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.prompt import MAX_PROMPT_LENGTH, MAX_RESPONSE_LENGTH

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


class PaperVersionMode(StrEnum):
    """Which version of each paper the texts are."""

    EARLY = "early"  # the version the reviewers read
    LATE = "late"  # camera-ready, written after the reviews
    DECISION = "decision"  # late for accepted papers, early for the others (OpenReview exports)


class BuildConfig(BaseModel):
    """A dataset build; every field is recorded in the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    sources: list[str] = Field(min_length=1, description="source folders or store URIs")
    name: str = Field(description="dataset name: datasets/<name>/<version>/")
    output: str = Field(description="store URI or directory to publish into")
    paper_version: PaperVersionMode = Field(description="early, late, or decision")
    aspect_schema: AspectSchema = Field(AspectSchema.SEVEN, description="7 or 4 aspects")
    distiller: Literal["embedded", "llm"] = "embedded"
    llm_endpoint: str = ""
    llm_model: str = ""
    max_prompt_length: int = Field(MAX_PROMPT_LENGTH, ge=256, le=1_048_576)
    max_response_length: int = Field(MAX_RESPONSE_LENGTH, ge=64, le=65_536)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    tokenizer: str | None = Field(None, description="tokenizer directory; None = the Llama-3 default")
    version: str | None = Field(None, description="version label; None = content hash of inputs + settings")
    overwrite: bool = False
    drop_appendix: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("use lower-case letters, digits, '.', '_' or '-' (start with a letter or digit)")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError("use lower-case letters, digits, '.', '_' or '-'")
        return value

    @field_validator("split")
    @classmethod
    def _split(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(math.isfinite(v) for v in value):  # NaN passes every comparison below
            raise ValueError("train/val/test shares must be finite numbers")
        if any(v < 0 for v in value) or abs(sum(value) - 1.0) > 1e-6 or value[0] <= 0:
            raise ValueError("train/val/test shares must be non-negative, sum to 1, with train > 0")
        return value

    @model_validator(mode="after")
    def _llm(self) -> BuildConfig:
        if self.distiller == "llm" and not (self.llm_endpoint and self.llm_model):
            raise ValueError("the llm distiller needs llm_endpoint and llm_model")
        return self

    def identity(self) -> dict[str, object]:
        """The settings that change the dataset's content (the output place does not)."""
        return self.model_dump(mode="json", exclude={"output", "overwrite", "version", "sources"})
