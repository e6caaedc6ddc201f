"""Run specs at the controller's edge: files, overrides, validation, and the wire form."""

from __future__ import annotations

import re

import pytest
from google.protobuf import struct_pb2

from reviewstack.common.errors import InvalidArgument, NotFound
from reviewstack.common.runspec import parse_overrides, read_spec_source, with_values
from reviewstack.training.specs import (
    load_spec,
    requested_resources,
    spec_from_pb,
    spec_json,
    spec_to_pb,
)
from reviewstack.v1 import training_pb2

from .conftest import spec_data, write_spec


def test_yaml_file_with_dotted_overrides(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("run_id: r1\ndataset: /d\nbase_model: /m\noutput: /o\nlora:\n  r: 16\n")
    spec = load_spec(str(path), ["lora.r=8", "learning_rate=2e-4", "merge=false", "max_steps=50"], "/unused")
    assert (spec.lora.r, spec.learning_rate, spec.merge, spec.max_steps) == (8, 2e-4, False, 50)
    assert spec.lora.alpha == 32  # untouched siblings keep their values
    assert spec.output == "/o"


def test_missing_run_id_and_output_are_filled_in(tmp_path):
    path = write_spec(tmp_path / "s.json", {"dataset": "/d", "base_model": "/m"})
    spec = load_spec(str(path), [], "/default/store")
    assert spec.output == "/default/store"
    assert re.fullmatch(r"run-\d{8}-\d{6}-[0-9a-f]{4}", spec.run_id)
    assert load_spec(str(path), [], "/x").run_id != spec.run_id


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["lora.rank=8"], "lora.rank: Extra inputs are not permitted"),
        (["pi_factor=0.5"], "pi_factor: Value error, a Position Interpolation factor below 1"),
        (["method=sft"], "method: Input should be 'lora', 'qlora' or 'full'"),
        (["run_id=Bad_Name"], "run_id: Value error, use lower-case letters"),
        (["max_prompt_length=12000"], "exceed target_context 12288"),
        (["effective_batch_size=16000"], "effective_batch_size: Input should be less than or equal to 4096"),
        (["micro_batch_size=1024"], "micro_batch_size: Input should be less than or equal to 256"),
        (["learning_rate=.inf"], "learning_rate: Input should be a finite number"),
        (["warmup_ratio=.nan"], "warmup_ratio: Input should be a finite number"),
    ],
)
def test_bad_values_are_one_line_naming_the_field(tmp_path, overrides, expected):
    path = write_spec(tmp_path / "s.json", spec_data("/d", "/o"))
    with pytest.raises(InvalidArgument) as info:
        load_spec(str(path), overrides, "/o")
    message = str(info.value)
    assert message.startswith("invalid run spec: ") and expected in message
    assert "\n" not in message and "pydantic" not in message


def test_malformed_overrides_and_sources(tmp_path):
    with pytest.raises(InvalidArgument, match="not key=value"):
        parse_overrides(["lora.r"])
    with pytest.raises(InvalidArgument, match="not key=value"):
        parse_overrides(["lora..r=8"])
    parsed = parse_overrides(["a.b=8", "c=[x, 0.5]", "d=", "e=: x"])
    assert parsed == {"a.b": 8, "c": ["x", 0.5], "d": "", "e": ": x"}
    with pytest.raises(InvalidArgument, match="'lora' is a value"):
        with_values({"lora": 3}, {"lora.r": 8})
    data = {"lora": {"r": 16}}
    assert with_values(data, {"lora.r": 8, "x.y": 1}) == {"lora": {"r": 8}, "x": {"y": 1}}
    assert data == {"lora": {"r": 16}}  # a copy: the caller's settings stay as they were
    with pytest.raises(NotFound, match=r"missing\.yaml does not exist"):
        read_spec_source(str(tmp_path / "missing.yaml"))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(InvalidArgument, match="must hold a mapping"):
        read_spec_source(str(tmp_path / "list.yaml"))


def test_spec_from_a_store_uri(s3_server, s3_store):
    s3_store.put_bytes("runs/r1/spec.json", b'{"run_id": "r1", "dataset": "s3://b/d", "base_model": "/m"}')
    uri = s3_store.uri_for("runs/r1/spec.json")
    spec = load_spec(uri, ["epochs=1"], "s3://b/out", s3_server.settings())
    assert (spec.run_id, spec.epochs, spec.output) == ("r1", 1.0, "s3://b/out")
    with pytest.raises(NotFound, match=r"runs/nope/spec\.json"):
        read_spec_source(s3_store.uri_for("runs/nope/spec.json"), s3_server.settings())


def test_wire_round_trip_keeps_every_field_and_type():
    spec = load_spec_from(spec_data("/d", "/o", lora={"r": 4, "target_modules": ["q_proj"]}, max_steps=7))
    pb = spec_to_pb(spec)
    assert set(pb.config.keys()).isdisjoint({"run_id", "dataset", "base_model", "output"})
    again = spec_from_pb(training_pb2.RunSpec.FromString(pb.SerializeToString()), "/unused")
    assert again == spec  # Struct carries numbers as doubles; ints come back as ints
    assert isinstance(again.max_steps, int) and again.lora.target_modules == ["q_proj"]


def test_wire_spec_errors():
    config = struct_pb2.Struct()
    config.update({"run_id": "sneaky"})
    with pytest.raises(InvalidArgument, match="set run_id in RunSpec's own fields"):
        spec_from_pb(training_pb2.RunSpec(dataset="/d", base_model="/m", config=config), "/o")
    config = struct_pb2.Struct()
    config.update({"lora": {"r": 0}})
    with pytest.raises(InvalidArgument, match=r"lora\.r: Input should be greater than or equal to 1"):
        spec_from_pb(training_pb2.RunSpec(dataset="/d", base_model="/m", config=config), "/o")


def test_requested_resources_distinguish_unset_from_zero():
    assert requested_resources(training_pb2.RunSpec()) == (None, None)
    pb = training_pb2.RunSpec(resources=training_pb2.Resources(gpus_per_node=0))
    assert requested_resources(pb) == (0, None)
    pb = training_pb2.RunSpec(resources=training_pb2.Resources(gpus_per_node=8, nodes=2))
    assert requested_resources(pb) == (8, 2)


def test_spec_json_is_what_the_job_validates():
    from reviewstack.common.runspec import TrainSpec

    spec = load_spec_from(spec_data("/d", "/o"))
    assert TrainSpec.model_validate_json(spec_json(spec)) == spec


def load_spec_from(data):
    from reviewstack.common.runspec import validate_train_spec

    return validate_train_spec(data)
