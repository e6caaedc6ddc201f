"""TGI's rules for generation parameters, written once for every place that accepts them.

The embedded engine checks TGI and OpenAI request bodies with these rules (422, naming the field), and the
Review service checks the parameters it is about to send a backend against the same rules (INVALID_ARGUMENT,
naming the field) before it calls one: a value one of them accepts, the other accepts too, and a value that
would break a sampler never reaches one.

The rules are TGI's router validation (temperature and repetition_penalty > 0, top_p and typical_p in (0, 1),
top_k > 0, frequency_penalty in [-2, 2], max_new_tokens > 0, best_of > 0, top_n_tokens in [0, 5], at most 4
stop sequences, truncate in (0, max_input_tokens]), plus the bounds TGI gets from its request types, which
Python does not have: TGI reads the body with a strict JSON parser into fixed-size numbers, so NaN, ±inf,
a negative or 65-bit seed, or a top_k past 32 bits never reach its validation. Python's `json` reads `NaN`,
`Infinity` and `1e999`, and pydantic keeps integers of any size, so those bounds are spelled out here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MAX_STOP_SEQUENCES = 4
MAX_STOP_SEQUENCE_CHARS = 256  # a stop sequence is a marker, not a document; every step searches for it
MAX_TOP_N_TOKENS = 5
MAX_TOP_K = 2**31 - 1  # TGI's top_k is a signed 32-bit integer
MAX_NEW_TOKENS = 2**32 - 1  # TGI's max_new_tokens is unsigned 32-bit (the context bounds it long before)
MAX_SEED = 2**64 - 1  # TGI's seed is unsigned 64-bit
MAX_BEST_OF = 1  # this engine writes one sequence per request
FREQUENCY_PENALTY_RANGE = (-2.0, 2.0)


class ParameterError(ValueError):
    """One parameter broke one rule: `field` names it, `rule` says what it must be, `value` is what came."""

    def __init__(self, field: str, rule: str, value: object, *, given: bool = True) -> None:
        self.field, self.rule, self.value = field, rule, value
        super().__init__(f"`{field}` {rule}" + (f". Given: {value!r}" if given else ""))


def finite(field: str, value: object) -> float:
    """`value` as a float when it is a finite number (not a bool, which JSON and Python would let pass)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ParameterError(field, "must be a number", value)
    number = float(value) if isinstance(value, float) or abs(value) < 2**1023 else math.inf
    if not math.isfinite(number):
        raise ParameterError(field, "must be a finite number", value)
    return number


def integer(field: str, value: object, low: int, high: int, rule: str) -> int:
    """`value` when it is an integer within [low, high]; `rule` says so in the error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(field, "must be an integer", value)
    if not low <= value <= high:
        raise ParameterError(field, rule, value)
    return value


def check_temperature(value: object) -> float:
    number = finite("temperature", value)
    if number <= 0:
        raise ParameterError("temperature", "must be strictly positive", value)
    return number


def check_repetition_penalty(value: object) -> float:
    number = finite("repetition_penalty", value)
    if number <= 0:
        raise ParameterError("repetition_penalty", "must be strictly positive", value)
    return number


def check_top_p(value: object) -> float:
    number = finite("top_p", value)
    if not 0 < number < 1:
        raise ParameterError("top_p", "must be > 0.0 and < 1.0", value)
    return number


def check_typical_p(value: object) -> float:
    number = finite("typical_p", value)
    if not 0 < number < 1:
        raise ParameterError("typical_p", "must be > 0.0 and < 1.0", value)
    return number


def check_frequency_penalty(value: object) -> float:
    number = finite("frequency_penalty", value)
    low, high = FREQUENCY_PENALTY_RANGE
    if not low <= number <= high:
        raise ParameterError("frequency_penalty", f"must be >= {low} and <= {high}", value)
    return number


def check_top_k(value: object) -> int:
    return integer("top_k", value, 1, MAX_TOP_K, f"must be strictly positive and at most {MAX_TOP_K}")


def check_max_new_tokens(value: object) -> int:
    return integer("max_new_tokens", value, 1, MAX_NEW_TOKENS, "must be strictly positive")


def check_best_of(value: object) -> int:
    return integer("best_of", value, 1, MAX_NEW_TOKENS, "must be strictly positive")


def check_seed(value: object) -> int:
    return integer("seed", value, 0, MAX_SEED, f"must be >= 0 and <= {MAX_SEED} (an unsigned 64-bit integer)")


def check_top_n_tokens(value: object) -> int:
    return integer("top_n_tokens", value, 0, MAX_TOP_N_TOKENS, f"must be >= 0 and <= {MAX_TOP_N_TOKENS}")


def check_truncate(value: object, max_input_tokens: int) -> int:
    return integer(
        "truncate", value, 1, max_input_tokens, f"must be strictly positive and less than {max_input_tokens}"
    )


def check_stop(stop: Sequence[str]) -> list[str]:
    if len(stop) > MAX_STOP_SEQUENCES:
        raise ParameterError("stop", f"supports up to {MAX_STOP_SEQUENCES} stop sequences", len(stop))
    for sequence in stop:
        if not isinstance(sequence, str) or not sequence:
            raise ParameterError("stop", "sequences must be non-empty strings", sequence)
        if len(sequence) > MAX_STOP_SEQUENCE_CHARS:
            raise ParameterError(
                "stop", f"sequences must be at most {MAX_STOP_SEQUENCE_CHARS} characters", len(sequence)
            )
    return list(stop)


@dataclass(frozen=True)
class GenerationParams:
    """The parameters TGI's `/generate` takes that have a rule of their own; None = not set (TGI's default).

    `check()` applies every rule: what passes is safe to hand a sampler (finite, in range, bounded)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    max_new_tokens: int | None = None
    top_n_tokens: int | None = None
    best_of: int | None = None
    stop: tuple[str, ...] = ()

    def check(self) -> GenerationParams:
        for name, rule in _RULES.items():
            value = getattr(self, name)
            if value is not None:
                rule(value)
        check_stop(self.stop)
        return self


_RULES = {
    "temperature": check_temperature,
    "top_p": check_top_p,
    "top_k": check_top_k,
    "typical_p": check_typical_p,
    "repetition_penalty": check_repetition_penalty,
    "frequency_penalty": check_frequency_penalty,
    "seed": check_seed,
    "max_new_tokens": check_max_new_tokens,
    "top_n_tokens": check_top_n_tokens,
    "best_of": check_best_of,
}
