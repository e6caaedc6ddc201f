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
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from reviewstack.common.review_format import ParsedReview, is_empty, render

if TYPE_CHECKING:
    from reviewstack.v1 import review_pb2


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
    def from_response(
        cls, file: str, content: bytes, system: str, response: review_pb2.ReviewResponse
    ) -> ReviewRecord:
        """The record of the Review service's answer about the paper `file`: what `reviewstack review
        --batch` stores and the web page offers for download, the same fields for both."""
        from google.protobuf import json_format

        body = ReviewBody(
            aspects=[
                AspectEntry(name=a.name, items=list(a.items), empty=a.empty, missing=a.missing)
                for a in response.review.aspects
            ],
            text=response.review.text,
            raw_text=response.raw_text,
        )
        return cls.of_paper(
            file,
            content,
            system,
            body,
            # defaults written out: λ = 0 and temperature 0 are settings a sweep must see, not absences
            lineage=json_format.MessageToDict(
                response.lineage, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            ),
            warnings=list(response.warnings),
            prompt_tokens=response.prompt_tokens,
            generated_tokens=response.generated_tokens,
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

    def to_markdown(self) -> str:
        """The review for people: a heading per aspect, its points as a list, declined and unwritten
        aspects said in words, and the lineage under it, so a copy pasted elsewhere still says where it
        came from."""
        title = f"Review of {self.paper_id}" if self.paper_id else "Review"
        lines = [f"# {title}", ""]
        for aspect in self.review.aspects:
            lines += [f"## {aspect.name}", ""]
            if aspect.missing:
                lines.append("*Not written: the review ended before this aspect.*")
            elif aspect.empty or is_empty(aspect.items):
                lines.append("*Declined: nothing to say on this aspect (`<No related terms>`).*")
            else:
                lines += [f"- {item}" for item in aspect.items]
            lines.append("")
        lineage = [(k, v) for k, v in _flat(self.lineage)]
        lineage += [("system", self.system)] if self.system else []
        lineage += [("created", self.created)] if self.created else []
        lineage += [("paper sha256", self.source.sha256)] if self.source else []
        if lineage:
            lines += ["---", "", *(f"- **{key}**: {value}" for key, value in lineage), ""]
        lines += [f"> {warning}" for warning in self.warnings]
        return "\n".join(lines).rstrip() + "\n"

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


def _flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested lineage as `a.b` keys, for lists of one line each."""
    if isinstance(value, dict):
        return [row for key, inner in value.items() for row in _flat(inner, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), value)]


__all__ = ["AspectEntry", "InvalidRecord", "ReviewBody", "ReviewRecord", "SourceFile"]
