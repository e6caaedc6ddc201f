"""The Review service's GenerationParameters against TGI's rules, which the engine applies too: every
field finite and bounded, refused with INVALID_ARGUMENT naming it, and whatever the service accepts, the
engine's own validation accepts as the service sends it (property-based, no process needed)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.errors import InvalidArgument
from reviewstack.generation.protocol import GenerateRequest, validate
from reviewstack.review.backend import Backend
from reviewstack.review.reviewer import ReviewLimits, check_parameters, decoding_for
from reviewstack.v1 import review_pb2

LIMITS = ReviewLimits(max_prompt_length=512, max_new_tokens=450)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [0.0, -0.0, 1e-300, 5e-324, 1e300, 0.5, 1.0, 1.5, 3.0, 10.0, math.nan, math.inf, -math.inf]
    ),
    st.floats(0.0, 3.0),
)
INT32 = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(0, 500))
INT64 = st.integers(-(2**63), 2**63 - 1)


def _parameters(**fields: object) -> review_pb2.GenerationParameters:
    return review_pb2.GenerationParameters(**{k: v for k, v in fields.items() if v is not None})


@given(
    temperature=FLOATS,
    top_p=FLOATS,
    max_new_tokens=INT32,
    seed=st.none() | INT64,
    refusal_penalty=st.none() | FLOATS,
    repetition_penalty=st.none() | FLOATS,
)
@settings(max_examples=400, deadline=None, database=None)
def test_what_the_service_accepts_the_engine_accepts(**fields):
    parameters = _parameters(**fields)
    try:
        check_parameters(parameters, LIMITS)
        decoding = decoding_for(parameters, LIMITS, AspectSchema.SEVEN, per_request_penalty=True)
    except InvalidArgument as refused:
        assert str(refused).startswith("parameters."), refused  # it names the field
        return
    options = Backend.options(decoding)  # what text-generation's client sends as TGI's parameters
    sent = {k: v for k, v in options.items() if v is not None and k != "stop_sequences"}
    body = json.loads(
        json.dumps({"inputs": "Hello", "parameters": {**sent, "stop": options["stop_sequences"]}})
    )
    request = validate(
        GenerateRequest.model_validate(body),
        [1, 2, 3],
        max_input_tokens=512,
        max_total_tokens=1024,
        refusal_penalty=decoding.refusal_penalty,
    )
    assert request.max_new_tokens == decoding.max_new_tokens


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"temperature": math.nan}, "parameters.temperature must be a finite number, got nan"),
        ({"temperature": math.inf}, "parameters.temperature must be a finite number, got inf"),
        ({"temperature": -0.5}, "parameters.temperature must be >= 0 (0 = greedy), got -0.5"),
        ({"top_p": math.nan}, "parameters.top_p must be a finite number"),
        ({"top_p": 1.5}, "parameters.top_p must be within [0, 1]"),
        ({"refusal_penalty": math.nan}, "parameters.refusal_penalty must be a finite number"),
        ({"refusal_penalty": -1.0}, "parameters.refusal_penalty must be within [0, 10.0]"),
        ({"repetition_penalty": math.inf}, "parameters.repetition_penalty must be a finite number"),
        ({"repetition_penalty": 0.0}, "parameters.repetition_penalty must be within (0, 3.0]"),
        ({"max_new_tokens": -5}, "parameters.max_new_tokens must be within [1, 450]"),
        ({"seed": -1}, "parameters.seed must be >= 0 and <= 18446744073709551615"),
    ],
)
def test_each_field_out_of_its_rule_is_invalid_argument_naming_it(fields, message):
    with pytest.raises(InvalidArgument) as refused:
        check_parameters(_parameters(**fields), LIMITS)
    assert message in str(refused.value)


def test_extreme_values_the_rules_allow_pass_through_unchanged():
    """1e-300 is a temperature TGI accepts: the service passes it on (the engine samples it safely)."""
    parameters = _parameters(temperature=1e-300, top_p=1e-300, seed=2**63 - 1)
    check_parameters(parameters, LIMITS)
    decoding = decoding_for(parameters, LIMITS, AspectSchema.SEVEN, per_request_penalty=True)
    assert Backend.options(decoding)["temperature"] == 1e-300 and decoding.seed == 2**63 - 1
