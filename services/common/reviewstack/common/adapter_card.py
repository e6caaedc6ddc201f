"""`reviewstack-adapter.json`: what a shipped LoRA adapter needs beside its weights, and where it came from.

PEFT's `adapter_config.json` names the base model and the LoRA shape, but not what this project adds:
the Position Interpolation factor the adapter was trained under (merging it onto an un-stretched base
would serve it at the wrong positions), the prompt and response lengths it saw, and its lineage and
evaluation numbers, so a model card and a merged model can always be traced to the experiment that
made them. `reviewstack experiment export` writes it; `reviewstack-merge` reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reviewstack.common.errors import FailedPrecondition

ADAPTER_CARD = "reviewstack-adapter.json"
CARD_FORMAT = "reviewstack.adapter/1"


class AdapterCard(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    format: Literal["reviewstack.adapter/1"] = CARD_FORMAT
    base_model: str = Field(min_length=1, description="the base model's published name")
    position_interpolation: float = Field(ge=1.0, le=64.0, description="RoPE scaling the adapter needs")
    target_context: int = Field(ge=1)
    max_prompt_length: int = Field(ge=1)
    max_response_length: int = Field(ge=1)
    aspects: Literal["7", "4"] = "7"
    lineage: dict[str, Any] = Field(default_factory=dict, description="experiment, system, run, dataset")
    evaluation: dict[str, Any] = Field(default_factory=dict, description="its numbers on the test papers")

    @classmethod
    def read(cls, folder: Path) -> AdapterCard:
        path = folder / ADAPTER_CARD
        if not (folder / "adapter_config.json").is_file() or not path.is_file():
            raise FailedPrecondition(
                f"{folder} is not a review-stack adapter folder: it needs adapter_config.json, the weights "
                f"and {ADAPTER_CARD} (`reviewstack experiment export` writes one)"
            )
        try:
            return cls.model_validate_json(path.read_text())
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise FailedPrecondition(f"{path} is not a valid adapter card: {problems}") from None

    def write(self, folder: Path) -> None:
        (folder / ADAPTER_CARD).write_text(json.dumps(self.model_dump(mode="json"), indent=1) + "\n")
