"""The review aspects: the criteria a generated review is structured by.

The 7-aspect list is the method's; the 4-aspect list is its variant. Each aspect has a short key (used in
JSON records) and the full criterion text (used in the prompt and in the rendered review), so renaming a
key never changes what the model reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from reviewstack.common.errors import InvalidArgument

#: The item an aspect holds when the review has nothing to say about it (an "empty aspect").
EMPTY_ASPECT = "<No related terms>"


@dataclass(frozen=True)
class Aspect:
    key: str
    criterion: str


class AspectSchema(StrEnum):
    SEVEN = "7"
    FOUR = "4"

    @classmethod
    def parse(cls, value: str | int) -> AspectSchema:
        try:
            return cls(str(value).removesuffix("-aspect"))
        except ValueError:
            raise InvalidArgument(f"unknown aspect schema {value!r}: use 7 or 4") from None

    @property
    def aspects(self) -> tuple[Aspect, ...]:
        return SEVEN_ASPECTS if self is AspectSchema.SEVEN else FOUR_ASPECTS

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(a.key for a in self.aspects)


SEVEN_ASPECTS: tuple[Aspect, ...] = (
    Aspect("idea", "How to evaluate the idea of the paper"),
    Aspect(
        "prior_work",
        "Compared to previous similar works, what are the essential differences, such as any fundamental "
        "differences, improvements, innovations",
    ),
    Aspect("experiments", "How to evaluate the experimental results in the paper"),
    Aspect("acceptance", "Potential reasons for acceptance"),
    Aspect("rejection", "Potential reasons for rejection"),
    Aspect("suggestions", "Other suggestions for further improving the quality of the paper"),
    Aspect("other", "Other important review comments"),
)

FOUR_ASPECTS: tuple[Aspect, ...] = (
    Aspect("significance", "Significance and novelty"),
    Aspect("acceptance", "Potential reasons for acceptance"),
    Aspect("rejection", "Potential reasons for rejection"),
    Aspect("suggestions", "Suggestions for improvement"),
)
