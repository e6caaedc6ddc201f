"""Run specs at the controller's edge: what a controller fills in (a run id, its own store as the
output), and the wire form (`RunSpec`). Reading a spec and its `key=value` overrides is
`reviewstack.common.runspec`'s, shared with the training job.

Every way in ends in `validate_train_spec`, so a misspelt key or a bad value is refused the same way
— one line naming the field — whether it came from a YAML file, the CLI or a gRPC client.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, struct_pb2

from reviewstack.common.errors import InvalidArgument
from reviewstack.common.runspec import TrainSpec, read_with_overrides, validate_train_spec
from reviewstack.common.settings import StoreSettings
from reviewstack.v1 import training_pb2

# the fields RunSpec carries itself; everything else travels in RunSpec.config
TOP_LEVEL = ("run_id", "dataset", "base_model", "output")


@dataclass(frozen=True)
class Resources:
    """Hardware of one run: `nodes` machines (pods) with `gpus_per_node` GPUs each; 0 GPUs = CPU."""

    gpus_per_node: int
    nodes: int = 1

    def __post_init__(self) -> None:
        if self.gpus_per_node < 0 or self.nodes < 1:
            raise InvalidArgument(
                f"resources: gpus_per_node must be ≥ 0 and nodes ≥ 1 (got {self.gpus_per_node}, {self.nodes})"
            )

    @property
    def processes(self) -> int:
        """Training processes in all: one per GPU, or one per node on CPU."""
        return self.nodes * max(self.gpus_per_node, 1)

    def to_pb(self) -> training_pb2.Resources:
        return training_pb2.Resources(gpus_per_node=self.gpus_per_node, nodes=self.nodes)


def new_run_id() -> str:
    """A fresh run id (a DNS label, as TrainSpec requires): sortable by time, unique by a random tail."""
    return f"run-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def fill_defaults(data: dict[str, Any], default_output: str) -> dict[str, Any]:
    """Fill in what a controller may choose: a new run id, and its own store as the output."""
    return {
        **data,
        "run_id": data.get("run_id") or new_run_id(),
        "output": data.get("output") or default_output,
    }


def load_spec(
    source: str, overrides: list[str], default_output: str, settings: StoreSettings | None = None
) -> TrainSpec:
    """Read, override, fill in and validate a spec: what `reviewstack train run|submit|render-job` do."""
    data = read_with_overrides(source, overrides, settings)
    return validate_train_spec(fill_defaults(data, default_output))


def spec_from_pb(pb: training_pb2.RunSpec, default_output: str) -> TrainSpec:
    """The TrainSpec a client sent: RunSpec's own fields plus `config` (the remaining TrainSpec keys)."""
    config = json_format.MessageToDict(pb.config) if pb.HasField("config") else {}
    clash = sorted(set(config) & set(TOP_LEVEL))
    if clash:
        raise InvalidArgument(f"set {', '.join(clash)} in RunSpec's own fields, not in RunSpec.config")
    data = {**config, "run_id": pb.run_id, "dataset": pb.dataset, "base_model": pb.base_model}
    data["output"] = pb.output
    return validate_train_spec(fill_defaults(data, default_output))


def spec_to_pb(spec: TrainSpec, resources: Resources | None = None) -> training_pb2.RunSpec:
    """The wire form of a spec, every default filled in (what Run.spec reports as accepted)."""
    config = struct_pb2.Struct()
    config.update(spec.model_dump(mode="json", exclude=set(TOP_LEVEL)))
    pb = training_pb2.RunSpec(
        run_id=spec.run_id,
        dataset=spec.dataset,
        base_model=spec.base_model,
        config=config,
        output=spec.output,
    )
    if resources is not None:
        pb.resources.CopyFrom(resources.to_pb())
    return pb


def requested_resources(pb: training_pb2.RunSpec) -> tuple[int | None, int | None]:
    """(gpus_per_node, nodes) the client asked for; None where it left the choice to the controller."""
    if not pb.HasField("resources"):
        return None, None
    r = pb.resources
    gpus = r.gpus_per_node if r.HasField("gpus_per_node") else None
    nodes = r.nodes if r.HasField("nodes") else None
    return gpus, nodes


def spec_json(spec: TrainSpec) -> bytes:
    """spec.json as the controller writes it into runs/<run-id>/ for the job to read."""
    return spec.model_dump_json(indent=2).encode() + b"\n"
