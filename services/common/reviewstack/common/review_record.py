"""The review record: one paper's review as a system wrote it (`reviews/<system>/<paper-id>.json`).

`reviewstack review --batch` writes it from the Review service's answer, the OpenAI-compatible baseline
writes it from a chat completion, the evaluation reads it, and an experiment judges candidates by it:
one model here, so a field added for one of them is there for all, and what counts as a finished review
(`well_formed`) can never differ between the evaluation and the experiment that chose by it.

Reading is lenient where records from elsewhere differ (a bare `review.text`, no `missing` flags, no
token counts: older or imported records) and strict where a wrong type would change a count.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from reviewstack.common.review_format import ParsedReview, is_empty, render


class InvalidRecord(ValueError):
    """Why bytes are not a review record, in one line."""


class AspectEntry(BaseModel):
    """One aspect: its criterion as the model read it, its items; `empty` when declined with
    `<No related terms>`, `missing` when the review never reached it (cut at its budget)."""

    model_config = ConfigDict(extra="ignore")

    name: StrictStr
    items: list[StrictStr] = Field(default_factory=list)
    empty: StrictBool | None = None  # absent or null reads false: older records lack the flags
    missing: StrictBool | None = None


class ReviewBody(BaseModel):
    """The review by aspect, rendered as text, and the model's own text before parsing."""

    model_config = ConfigDict(extra="ignore")

    aspects: list[AspectEntry] = Field(default_factory=list)
    text: StrictStr = ""
    raw_text: StrictStr = ""

    @classmethod
    def from_parsed(cls, parsed: ParsedReview, raw_text: str) -> ReviewBody:
        """Every aspect of the parsed review's schema, in order, flagged as the parser found it."""
        return cls(
            aspects=[
                AspectEntry(
                    name=aspect.criterion,
                    items=parsed.aspects[aspect.key],
                    empty=is_empty(parsed.aspects[aspect.key]),
                    missing=aspect.key in parsed.missing,
                )
                for aspect in parsed.schema.aspects
            ],
            text=render(parsed.aspects, parsed.schema),
            raw_text=raw_text,
        )


class SourceFile(BaseModel):
    """The paper file reviewed, by name and content hash: a record names exactly what it reviewed."""

    file: str
    sha256: str


class ReviewRecord(BaseModel):
    """One review record; fields other writers add are kept (`extra`) and written back unchanged."""

    model_config = ConfigDict(extra="allow")

    paper_id: StrictStr | None = None
    system: StrictStr | None = None
    source: SourceFile | None = None
    created: str | None = None
    review: ReviewBody
    # how the review was made: model, prompt version, decoding parameters (λ among them), backend
    lineage: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    prompt_tokens: StrictInt | None = None
    generated_tokens: StrictInt | None = None

    @classmethod
    def of_paper(
        cls, file: str, content: bytes, system: str, review: ReviewBody, **fields: Any
    ) -> ReviewRecord:
        """A new record of the paper `file` (its stem is the paper id) with `content` hashed, stamped now."""
        return cls(
            paper_id=PurePath(file).stem,
            system=system,
            source=SourceFile(file=PurePath(file).name, sha256=hashlib.sha256(content).hexdigest()),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            review=review,
            **fields,
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> ReviewRecord:
        """Parse a stored record; InvalidRecord says in one line what is wrong with it."""
        try:
            raw = json.loads(data)
        except ValueError as exc:  # bad UTF-8 too
            raise InvalidRecord(f"not JSON ({exc})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("review"), dict):
            raise InvalidRecord(
                "not a review record: a JSON object with a 'review' object, as `reviewstack review --batch` "
                "writes, was expected"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            raise InvalidRecord(f"not a review record: {problems}") from None

    def to_json(self) -> bytes:
        """The stored form; every field written out (λ = 0 is a setting a sweep must see, not an absence)."""
        return json.dumps(self.model_dump(mode="json"), indent=1).encode()

    @property
    def reached_budget(self) -> bool:
        """The review wrote as many tokens as it was allowed (`lineage.parameters.max_new_tokens`): a
        review that ends there was cut, even when its last aspect had begun. A record without the numbers
        reads as not cut."""
        parameters = self.lineage.get("parameters")
        budget = parameters.get("max_new_tokens") if isinstance(parameters, dict) else None
        if not isinstance(budget, int) or isinstance(budget, bool) or self.generated_tokens is None:
            return False
        return 0 < budget <= self.generated_tokens

    @property
    def unwritten_aspects(self) -> list[str]:
        """Names of the aspects the review never reached (flagged `missing`)."""
        return [aspect.name for aspect in self.review.aspects if aspect.missing]

    @property
    def well_formed(self) -> bool:
        """The format the model is trained to write: structured by aspects, every aspect written or
        declined, and the review ended by the model rather than by its budget."""
        return bool(self.review.aspects) and not self.unwritten_aspects and not self.reached_budget


__all__ = ["AspectEntry", "InvalidRecord", "ReviewBody", "ReviewRecord", "SourceFile"]
