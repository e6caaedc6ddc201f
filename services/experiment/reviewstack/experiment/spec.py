"""The experiment spec: which datasets, training runs and reviewing systems to make, how to evaluate
them and which comparisons to report. One YAML file (`experiments/*.yaml`) is the whole recipe, so an
experiment is repeated by rerunning its file.

Names in a spec are short labels (`lora-pi`); what they become in the store is derived from the
experiment id (`datasets/<id>-<dataset>/`, `runs/<id>-<run>/`, `reviews/<id>.<system>/`), so two
experiments never write into each other's artifacts and a rerun finds its own.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reviewstack.common.errors import InvalidArgument, NotFound

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
EMBEDDED = "embedded"  # the base model the embedded defaults ship (SmolLM2-135M-Instruct)
MAX_SYSTEMS = 64
MAX_CANDIDATES = 16  # trainings one selection may make


def _label(value: str) -> str:
    if not _LABEL.match(value):
        raise ValueError(
            f"{value!r}: use lower-case letters, digits and '-' (at most 32, start and end alphanumeric)"
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class DatasetSpec(_Strict):
    """A data-prep build (`reviewstack data build`)."""

    sources: list[str] = Field(min_length=1, description="source folders, relative to the spec file")
    paper_version: Literal["early", "late", "decision"] = "decision"
    aspects: Literal["7", "4"] = "7"
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    max_prompt_length: int = Field(11_138, ge=256)
    max_response_length: int = Field(1_150, ge=64)
    tokenizer: str | None = Field(None, description="tokenizer folder (default: Llama-3)")

    @field_validator("aspects", mode="before")
    @classmethod
    def _aspects(cls, value: object) -> object:
        return str(value)


class RunSpec(_Strict):
    """A training run (`reviewstack train run CONFIG key=value…`): a training-job config file, the
    dataset it reads, and overrides of that config."""

    dataset: str
    config: str = Field(description="training-job config file, relative to the spec file")
    base_model: str = Field(EMBEDDED, description="'embedded' or a model folder")
    overrides: dict[str, Any] = Field(default_factory=dict, description="config keys (dotted) to set")
    select: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="config keys (dotted) → candidate values: each combination is trained and the one "
        "chosen by `select_by` becomes the run (e.g. learning_rate: [1.0e-4, 5.0e-4])",
    )
    select_by: Literal["validation_loss", "well_formed"] = Field(
        "validation_loss",
        description="how `select` chooses: the lowest validation loss, or the largest share of "
        "well-formed reviews of the validation papers (each candidate reviews them with the experiment's "
        "decoding and λ 0; the lower validation loss breaks a tie): a small model's loss does not say "
        "whether it ends its reviews",
    )
    selection_of: str | None = Field(
        None,
        description="train with the values another run's selection chose: a variant that changes one "
        "thing keeps the learning rate chosen for the run it is compared with",
    )

    @field_validator("select")
    @classmethod
    def _candidates(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not 2 <= len(values) <= 8:
                raise ValueError(f"{key}: give 2 to 8 candidate values")
            if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
                raise ValueError(f"{key}: a candidate value is repeated")
        if math.prod(len(v) for v in value.values()) > MAX_CANDIDATES:
            raise ValueError(f"at most {MAX_CANDIDATES} combinations of candidate values")
        return value


class Decoding(_Strict):
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    top_p: float = Field(0.0, ge=0.0, le=1.0)
    seed: int | None = 0
    repetition_penalty: float = Field(1.0, ge=1.0, le=5.0)
    max_new_tokens: int = Field(0, ge=0, le=8192, description="0 = the model's budget (1,150 at 12k)")


class SystemSpec(_Strict):
    """A reviewer: a trained run's merged model (`run: NAME`) or an untrained base model (`base: …`)."""

    run: str | None = None
    base: str | None = None
    refusal_penalty: float = Field(0.0, ge=0.0, le=100.0)
    decoding: Decoding | None = Field(None, description="default: the experiment's decoding")
    decodings: list[Decoding] = Field(
        default_factory=list,
        max_length=8,
        description="candidate decodings of a trained system: each reviews its run's validation papers and "
        "the one with the most well-formed reviews reviews the evaluation papers (a tie: the first listed)",
    )

    @model_validator(mode="after")
    def _one_model(self) -> SystemSpec:
        if (self.run is None) == (self.base is None):
            raise ValueError("name exactly one of run (a run of this spec) or base ('embedded' or a folder)")
        if self.decodings and (self.decoding is not None or self.run is None or len(self.decodings) < 2):
            raise ValueError(
                "decodings: 2 to 8 candidates for a trained system (run: …), instead of decoding: one"
            )
        return self


class Sweep(_Strict):
    """λ values of the refusal penalty, each reviewed as its own system `<system>-l<λ>`."""

    system: str
    refusal_penalties: list[float] = Field(min_length=1, max_length=16)

    @field_validator("refusal_penalties")
    @classmethod
    def _finite(cls, values: list[float]) -> list[float]:
        if any(not math.isfinite(v) or v < 0 or v > 100 for v in values):
            raise ValueError("λ values must be finite and within [0, 100]")
        return values


class Comparison(_Strict):
    title: str = Field(min_length=1, max_length=120)
    a: str
    b: str
    note: str = Field("", max_length=600)


class EvaluationSpec(_Strict):
    human: str = Field(
        description="dataset whose ground truth scores every system; its test split is reviewed"
    )
    split: Literal["train", "val", "test"] = "test"
    max_papers: int | None = Field(None, ge=1, description="the first N papers of that split (sorted by id)")
    matcher: Literal["embedded", "pair"] = "embedded"
    bootstrap: int = Field(1000, ge=0, le=100_000)
    seed: int = 0


class ExperimentSpec(_Strict):
    id: str
    title: str = Field(min_length=1, max_length=200)
    description: str = ""
    datasets: dict[str, DatasetSpec] = Field(min_length=1)
    runs: dict[str, RunSpec] = Field(default_factory=dict)
    decoding: Decoding = Field(default_factory=Decoding)
    systems: dict[str, SystemSpec] = Field(min_length=1)
    sweep: Sweep | None = None
    evaluation: EvaluationSpec
    comparisons: list[Comparison] = Field(default_factory=list)
    # where the spec file is: relative paths in it are resolved against this folder
    folder: Path = Field(Path("."), exclude=True)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _label(value)

    @field_validator("datasets", "runs", "systems")
    @classmethod
    def _labels(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            _label(name)
        return value

    @model_validator(mode="after")
    def _references(self) -> ExperimentSpec:
        problems = []
        for name, run in self.runs.items():
            if run.dataset not in self.datasets:
                problems.append(f"runs.{name}.dataset: no dataset {run.dataset!r}")
            if run.select_by != "validation_loss" and not run.select:
                problems.append(f"runs.{name}.select_by: a run without a select block chooses nothing")
            both = sorted(set(run.select) & set(run.overrides))
            if both:
                problems.append(f"runs.{name}: {', '.join(both)} both selected and overridden")
            target = self.runs.get(run.selection_of) if run.selection_of else None
            if run.selection_of is None:
                pass
            elif target is None or not target.select or run.select or run.selection_of == name:
                problems.append(
                    f"runs.{name}.selection_of: {run.selection_of!r} is not another run with a select "
                    "block (and a run takes a selection or makes one, not both)"
                )
            elif set(target.select) & set(run.overrides):
                problems.append(f"runs.{name}: overrides what it takes from {run.selection_of}'s selection")
        for name, system in self.systems.items():
            if system.run is not None and system.run not in self.runs:
                problems.append(f"systems.{name}.run: no run {system.run!r}")
        if self.evaluation.human not in self.datasets:
            problems.append(f"evaluation.human: no dataset {self.evaluation.human!r}")
        if self.sweep is not None and self.sweep.system not in self.systems:
            problems.append(f"sweep.system: no system {self.sweep.system!r}")
        names = set(self.all_systems())
        for i, comparison in enumerate(self.comparisons):
            for side in ("a", "b"):
                if getattr(comparison, side) not in names | {"human"}:
                    problems.append(f"comparisons[{i}].{side}: no system {getattr(comparison, side)!r}")
        if len(names) > MAX_SYSTEMS:
            problems.append(f"{len(names)} systems (with the sweep): at most {MAX_SYSTEMS}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def all_systems(self) -> dict[str, SystemSpec]:
        """The spec's systems plus one per swept λ (the swept system's other settings kept)."""
        systems = dict(self.systems)
        if self.sweep is not None:
            swept = self.systems[self.sweep.system]
            for value in self.sweep.refusal_penalties:
                if value != swept.refusal_penalty:
                    systems[sweep_name(self.sweep.system, value)] = swept.model_copy(
                        update={"refusal_penalty": value}
                    )
        return systems

    def candidates(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        """The trainings a run makes, as (label, values added to its overrides): one, labelled by the
        run's name, without `select`; one per combination of candidate values with it, labelled
        `run[key=value,…]`."""
        run = self.runs[name]
        if not run.select:
            return [(name, {})]
        keys = sorted(run.select)
        made = []
        for combination in itertools.product(*(run.select[k] for k in keys)):
            values = dict(zip(keys, combination, strict=True))
            label = ",".join(f"{k}={_shown(v)}" for k, v in values.items())
            made.append((f"{name}[{label}]", values))
        return made

    def decoding_of(self, system: SystemSpec) -> Decoding:
        return system.decoding or self.decoding

    def path(self, relative: str) -> Path:
        """A path the spec names (`${VAR}` expanded: data lives outside the repository), resolved
        against the spec file's folder."""
        expanded = os.path.expandvars(relative)
        if "$" in expanded:
            raise InvalidArgument(
                f"{relative!r} in {self.id}'s spec names an environment variable that is not set: set it to "
                "the folder it stands for (e.g. REVIEWSTACK_DATA=/data, where the paper archives are)"
            )
        path = Path(expanded).expanduser()
        return path if path.is_absolute() else (self.folder / path).resolve()

    def sha256(self) -> str:
        return fingerprint(self.model_dump(mode="json"))


def sweep_name(system: str, value: float) -> str:
    return f"{system}-l{value:g}".replace(".", "p")


def decoding_label(decoding: Decoding) -> str:
    """A candidate decoding as a step shows it: the settings it gives (`temperature=1,top_p=0.9`)."""
    given = decoding.model_dump(exclude_defaults=True)
    return ",".join(f"{k}={_shown(v)}" for k, v in given.items()) or "greedy"


def _shown(value: Any) -> str:
    """A candidate value as its label shows it: a float in its shortest form (0.0005), a list as JSON."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def fingerprint(data: Any) -> str:
    """A short content hash of JSON data: a step whose inputs hash the same is the same step."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_experiment(path: Path) -> ExperimentSpec:
    """Read and check a spec file; every problem is named by its place in the file."""
    if not path.is_file():
        raise NotFound(f"experiment spec {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path}: expected a mapping at the top (id, datasets, runs, systems, …)")
    try:
        return ExperimentSpec(**data, folder=path.resolve().parent)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise InvalidArgument(f"{path} is not a valid experiment spec:\n" + "\n".join(lines)) from None
