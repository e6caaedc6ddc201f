"""Run an experiment: datasets → training runs → reviews of the evaluation papers → one evaluation →
the experiment report, each step a `reviewstack` verb (verbs.py).

What a step made is recorded in `experiments/<id>/state.json` in the store, under a fingerprint of the
step's inputs (its part of the spec, the config file's text, the upstream artifacts). A rerun skips every
step whose fingerprint is recorded and whose artifact is still there, and the verbs themselves resume
inside a step (a run id resumes its run, a review batch skips papers already written), so an interrupted
experiment goes on where it stopped. A changed spec changes the fingerprints of what it touches only:
training runs and review folders carry their fingerprint in their names, so a new variant never
resumes or mixes with an old one.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape

from reviewstack.common.errors import FailedPrecondition, InvalidArgument, NotFound, ReviewStackError
from reviewstack.common.progress import ProgressDisplay
from reviewstack.common.prompt import paper_from_messages
from reviewstack.common.review_record import ReviewRecord
from reviewstack.common.runspec import read_spec_source, validate_train_spec, with_values
from reviewstack.common.store import ArtifactStore, LocalStore
from reviewstack.experiment.spec import EMBEDDED, ExperimentSpec, SystemSpec, decoding_label, fingerprint
from reviewstack.experiment.verbs import Verbs

STATE_FORMAT = "reviewstack.experiment.state/1"
Stage = Literal["data", "train", "review", "eval", "report"]
STAGES: tuple[Stage, ...] = ("data", "train", "review", "eval", "report")
MAX_RUN_ID = 63


@dataclass
class Options:
    jobs: int = 1  # training runs / review batches at once (a GPU has room for several small ones)
    concurrency: int = 16  # reviews decoded together by one engine (its KV-cache slots)
    only: tuple[str, ...] = ()  # runs or systems to make (their inputs too); nothing else, no report
    skip: tuple[str, ...] = ()  # runs or systems left out (a run's systems too); the report says so
    until: Stage = "report"


@dataclass(frozen=True)
class Step:
    """One step of the plan: `work(made)` gets the results (run ids, review folders) of the steps
    before it and returns its own."""

    name: str  # "train:lora-pi", "select:lora-pi", "review:base"
    work: Callable[[dict[str, str]], str]
    needs: tuple[str, ...] = ()


@dataclass
class State:
    """experiments/<id>/state.json: what each step made, under which fingerprint, in how long."""

    store: ArtifactStore
    key: str
    data: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, store: ArtifactStore, experiment: str) -> State:
        key = f"experiments/{experiment}/state.json"
        data = json.loads(store.get_bytes(key)) if store.exists(key) else {}
        data.setdefault("format", STATE_FORMAT)
        data.setdefault("steps", {})
        return cls(store, key, data)

    def done(self, step: str, print_: str) -> dict[str, Any] | None:
        record = self.data["steps"].get(step)
        return record if record and record.get("fingerprint") == print_ else None

    def record(self, step: str, entry: dict[str, Any]) -> None:
        with self.lock:
            self.data["steps"][step] = {**entry, "finished": _now()}
            self.save()

    def save(self) -> None:
        self.data["updated"] = _now()
        self.store.put_bytes(self.key, json.dumps(self.data, indent=1, sort_keys=True).encode())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ExperimentRunner:
    def __init__(
        self,
        spec: ExperimentSpec,
        store: ArtifactStore,
        work: Path,
        verbs: Verbs,
        options: Options,
        console: Console | None = None,
    ) -> None:
        self.spec, self.store, self.work, self.verbs, self.options = spec, store, work, verbs, options
        self.console = console or Console(stderr=True)
        self.state = State.load(store, spec.id)
        self._targets: dict[str, tuple[str, int]] = {}  # step → (its run or review folder, papers)
        self._model_locks: dict[str, threading.Lock] = {}  # run id → held while its model is fetched
        self._check_only()

    # ---------------------------------------------------------------- the plan
    def run(self) -> dict[str, Any]:
        """Make what the options ask for; the state's steps (and the report's URI when made)."""
        self.state.data["spec"] = self.spec.model_dump(mode="json")
        self.state.data["spec_sha256"] = self.spec.sha256()
        self.state.data["skipped"] = sorted(self.options.skip)
        self.state.data["plan"] = self._plan()
        self.state.save()
        systems = self._systems()
        runs = sorted({s.run for s in systems.values() if s.run} | self._only_runs())
        runs = sorted(set(runs) | {r for n in runs if (r := self.spec.runs[n].selection_of)})
        for name in runs:  # every training's spec checked before the first one starts
            for values in self._possible_values(name):
                self._train_spec(name, values)
        datasets = sorted({self.spec.runs[r].dataset for r in runs} | {self.spec.evaluation.human})
        built = {name: self._dataset(name) for name in datasets}
        human = built[self.spec.evaluation.human]
        evaluation = self.spec.evaluation
        papers = self._papers(human, evaluation.split, evaluation.max_papers)
        for name in runs:  # a test paper in a run's training split would be scored as unseen
            self._check_disjoint(name, built[self.spec.runs[name].dataset], papers)
        if self.options.until == "data":
            return self.state.data
        steps = self._training_steps(runs)
        if self.options.until != "train":
            steps += self._review_steps(systems, papers)
        made = self._schedule(steps)
        if self.options.until in ("train", "review") or self.options.only:
            return self.state.data
        reviews = {name: made[f"review:{name}"] for name in systems}
        evaluation = self._evaluate(human, reviews)
        if self.options.until == "eval":
            return self.state.data
        from reviewstack.experiment.report import write_report

        with self.console.status("writing the experiment report…"):
            self.state.data["report"] = write_report(self.store, self.spec, self.state.data, evaluation)
        self.state.save()
        return self.state.data

    def _plan(self) -> list[str]:
        """Every step the spec makes, whatever --only, --skip or --until say. The state keeps the steps of
        earlier versions of the spec (a reverted change resumes them); reports show only these."""
        datasets = sorted({r.dataset for r in self.spec.runs.values()} | {self.spec.evaluation.human})
        return [
            *(f"data:{name}" for name in datasets),
            *(step.name for step in self._training_steps(sorted(self.spec.runs))),
            *(step.name for step in self._review_steps(self.spec.all_systems(), None)),
            "eval",
        ]

    def _review_steps(
        self, systems: dict[str, SystemSpec], papers: tuple[Path, list[str]] | None
    ) -> list[Step]:
        """A review of the evaluation papers per system, after its run; a system with candidate decodings
        first has each review the run's validation papers and a `choose:` step keep the best formed."""
        steps = []
        for name, system in systems.items():
            needs = (self._run_step(system.run),) if system.run else ()
            if system.decodings:
                labels = [f"{name}[{decoding_label(d)}]" for d in system.decodings]
                for index, label in enumerate(labels):
                    trial = partial(self._validate_decoding, system, index, label)
                    steps.append(Step(f"validate:{label}", trial, needs))
                choose_ = partial(self._choose_decoding, name, system, labels)
                steps.append(Step(f"choose:{name}", choose_, tuple(f"validate:{label}" for label in labels)))
                needs = (*needs, f"choose:{name}")
            steps.append(Step(f"review:{name}", partial(self._review, name, system, papers), needs))
        return steps

    def _training_steps(self, runs: list[str]) -> list[Step]:
        """A run trains once; a run with `select` trains each candidate (and, selecting by form, has it
        review the validation papers), then a `select:` step chooses; a run with `selection_of` trains
        once that selection is made."""
        steps = []
        for name in runs:
            run = self.spec.runs[name]
            if run.selection_of:
                taken = partial(self._train_with_selection, name, run.selection_of)
                steps.append(Step(f"train:{name}", taken, (f"select:{run.selection_of}",)))
                continue
            candidates = self.spec.candidates(name)
            for label, values in candidates:
                steps.append(Step(f"train:{label}", partial(self._train, name, values, label)))
            if not run.select:
                continue
            needs = [f"train:{label}" for label, _ in candidates]
            if run.select_by == "well_formed":
                for label, _ in candidates:
                    review = partial(self._validation_reviews, name, label)
                    steps.append(Step(f"validate:{label}", review, (f"train:{label}",)))
                needs += [f"validate:{label}" for label, _ in candidates]
            steps.append(Step(f"select:{name}", partial(self._select, name), tuple(needs)))
        return steps

    def _run_step(self, name: str) -> str:
        """The step whose result is the run id a run's systems review with."""
        return f"select:{name}" if self.spec.runs[name].select else f"train:{name}"

    def _possible_values(self, name: str) -> list[dict[str, Any]]:
        """Every set of values a run may train with: its candidates, or those of the selection it takes."""
        source = self.spec.runs[name].selection_of or name
        return [values for _, values in self.spec.candidates(source)]

    def _systems(self) -> dict[str, SystemSpec]:
        systems = self.spec.all_systems()
        if self.options.only:
            wanted = set(self.options.only)
            systems = {n: s for n, s in systems.items() if n in wanted}
        skipped = set(self.options.skip)
        return {n: s for n, s in systems.items() if n not in skipped and s.run not in skipped}

    def _only_runs(self) -> set[str]:
        return {n for n in self.options.only if n in self.spec.runs and n not in self.options.skip}

    def _check_only(self) -> None:
        known = set(self.spec.all_systems()) | set(self.spec.runs)
        for option, names in (("--only", self.options.only), ("--skip", self.options.skip)):
            unknown = sorted(set(names) - known)
            if unknown:
                raise InvalidArgument(f"{option} {', '.join(unknown)}: not a run or system of {self.spec.id}")

    def _train_spec(self, name: str, values: dict[str, Any]) -> dict[str, Any]:
        """A run's config with its overrides, checked as the training job will check it (TrainSpec),
        plus the one check that needs the dataset: its prompts and responses fit the run's context.
        A variant that cannot train fails here, in seconds, not after the runs before it."""
        run = self.spec.runs[name]
        config = self.spec.path(run.config)
        if not config.is_file():
            raise NotFound(f"runs.{name}.config: {config} does not exist")
        data = with_values(read_spec_source(str(config)), {**values, **run.overrides})
        placeholders = {"run_id": "check", "dataset": "check", "base_model": "check", "output": "check"}
        given = "".join(f" + {k}={v}" for k, v in values.items())
        where = f"runs.{name} ({run.config} + overrides{given})"
        checked = validate_train_spec({**data, **placeholders}, where)
        dataset = self.spec.datasets[run.dataset]
        if dataset.max_prompt_length + dataset.max_response_length > checked.target_context:
            raise InvalidArgument(
                f"runs.{name}: dataset {run.dataset} holds prompts and responses of up to "
                f"{dataset.max_prompt_length} + {dataset.max_response_length} tokens, over the run's "
                f"target_context {checked.target_context}: give the run a dataset built with a shorter "
                "max_prompt_length (same split and seed)"
            )
        return data

    # ---------------------------------------------------------------- steps
    def _dataset(self, name: str) -> str:
        """datasets/<id>-<name>/<version>: built by data-prep, which finds an identical earlier build."""
        dataset = self.spec.datasets[name]
        step = f"data:{name}"
        print_ = fingerprint(dataset.model_dump(mode="json"))
        record = self.state.done(step, print_)
        if record and self.store.exists(f"{record['dataset']}/manifest.json"):
            self._say(step, f"reused {record['dataset']}")
            return record["dataset"]
        args = [
            "data", "build", "--name", f"{self.spec.id}-{name}",
            "--paper-version", dataset.paper_version, "--aspects", dataset.aspects,
            "--split", ",".join(f"{v:g}" for v in dataset.split), "--seed", str(dataset.seed),
            "--max-prompt-length", str(dataset.max_prompt_length),
            "--max-response-length", str(dataset.max_response_length),
            "--out", self.store.uri, *self.verbs.server("dataprep"),
        ]  # fmt: skip
        for source in dataset.sources:
            args += ["--source", str(self.spec.path(source))]
        if dataset.tokenizer:
            args += ["--tokenizer", str(self.spec.path(dataset.tokenizer))]
        began = time.monotonic()
        with self.console.status(f"{step}: building (papers → 7-aspect targets, human points)…"):
            result = self.verbs.run_json(step, args)
        key = f"datasets/{result['name']}/{result['version']}"
        self.state.record(
            step,
            {
                "fingerprint": print_,
                "dataset": key,
                "counts": result.get("counts", {}),
                "reused_build": result.get("reused", False),
                "seconds": round(time.monotonic() - began, 1),
            },
        )
        self._say(step, f"{key} {result.get('counts', {})}")
        return key

    def _train(self, name: str, values: dict[str, Any], label: str, made: dict[str, str]) -> str:
        """runs/<run-id>/ of a succeeded run; `reviewstack train run` (or `submit --watch` to a server).
        `values` are a candidate's or a taken selection's, applied under the run's own overrides."""
        run = self.spec.runs[name]
        dataset = self._recorded_dataset(run.dataset)
        config = self.spec.path(run.config)
        if not config.is_file():
            raise NotFound(f"runs.{name}.config: {config} does not exist")
        settings = read_spec_source(str(config))  # its settings, not its comments, name the run
        overrides = {**values, **run.overrides}
        print_ = fingerprint(
            {"config": settings, "overrides": overrides, "dataset": dataset, "base_model": run.base_model}
        )
        run_id = f"{self.spec.id}-{name}-{print_[:6]}"
        if len(run_id) > MAX_RUN_ID:
            raise InvalidArgument(
                f"run id {run_id} is over {MAX_RUN_ID} characters: shorten the id or run name"
            )
        step = f"train:{label}"
        self._targets[step] = (f"runs/{run_id}", 0)
        if self._run_state(run_id) == "succeeded":
            record = self.state.done(step, print_)
            if record is None:  # made by an earlier invocation that stopped before recording it
                self._record_run(step, print_, run_id, None, values)
            self._say(step, f"reused runs/{run_id}")
            return run_id
        base = self._base_model(run.base_model)
        verb = (
            ["train", "submit", *self.verbs.server("training"), "--watch"]
            if "training" in self.verbs.servers
            else ["train", "run"]
        )
        args = [
            *verb, str(config), f"run_id={run_id}", f"dataset={self.store.uri_for(dataset)}",
            f"base_model={base}", f"output={self.store.uri}",
            *(f"{key}={json.dumps(value)}" for key, value in overrides.items()),
        ]  # fmt: skip
        began = time.monotonic()
        self.verbs.run(step, args)
        if self._run_state(run_id) != "succeeded":
            raise FailedPrecondition(f"{step}: run {run_id} ended {self._run_state(run_id)}; see its log")
        self._record_run(step, print_, run_id, time.monotonic() - began, values)
        return run_id

    def _train_with_selection(self, name: str, source: str, made: dict[str, str]) -> str:
        chosen = self.state.data["steps"][f"select:{source}"]["chosen"]
        return self._train(name, chosen, name, made)

    def _select(self, name: str, made: dict[str, str]) -> str:
        """The candidate `select_by` prefers becomes the run (validation loss at each one's best step)."""
        run = self.spec.runs[name]
        candidates = []
        for label, values in self.spec.candidates(name):
            run_id = made[f"train:{label}"]
            status = json.loads(self.store.get_bytes(f"runs/{run_id}/status.json"))
            best = status.get("best") or {}
            if best.get("val_loss") is None:
                raise FailedPrecondition(
                    f"select:{name}: {label} recorded no validation loss; selection needs a dataset with a "
                    "validation split and a config that evaluates (eval_steps)"
                )
            candidate = {
                "label": label,
                "values": values,
                "run": f"runs/{run_id}",
                "best": best,
                "steps": status.get("step"),
            }
            if run.select_by == "well_formed":
                candidate["validation"] = self._form_of(made[f"validate:{label}"])
            candidates.append(candidate)
        chosen = choose(candidates, run.select_by)
        inputs = [(c["run"], c.get("validation", {}).get("reviews")) for c in candidates]
        step, print_ = f"select:{name}", fingerprint(inputs)
        if self.state.done(step, print_):
            self._say(step, f"reused {chosen['run']}")
            return chosen["run"].removeprefix("runs/")
        self.state.record(
            step,
            {
                "fingerprint": print_,
                "by": SELECTED_BY[run.select_by],
                "chosen": chosen["values"],
                **{k: chosen[k] for k in ("run", "best", "steps")},
                "candidates": candidates,
            },
        )
        form = chosen.get("validation")
        formed = f", {form['well_formed']} of {form['papers']} well formed" if form else ""
        self._say(
            f"select:{name}",
            f"{chosen['label']} ({chosen['run']}, validation loss {chosen['best']['val_loss']:.4f}{formed})",
        )
        return chosen["run"].removeprefix("runs/")

    def _validation_reviews(self, name: str, label: str, made: dict[str, str]) -> str:
        """A candidate's reviews of its dataset's validation papers, written as a system of the run would
        write them (the experiment's decoding, λ 0), so its form can be judged before any test paper."""
        step, run_id = f"validate:{label}", made[f"train:{label}"]
        return self._review_validation(step, name, run_id, SystemSpec(run=name))

    def _review_validation(self, step: str, run: str, run_id: str, system: SystemSpec) -> str:
        """reviews/<run-id>.val-<fp>/: the run's validation papers reviewed by `system` (a candidate run
        or a candidate decoding); the same settings find the same folder, so nothing is reviewed twice."""
        papers = self._papers(self._recorded_dataset(self.spec.runs[run].dataset), "val", None)
        return self._reviews_by(step, f"{run_id}.val", run_id, system, papers)

    def _form_of(self, prefix: str) -> dict[str, Any]:
        """How many of a candidate's validation reviews are well formed (reviewstack.common.review_record)."""
        keys = [ref.key for ref in self.store.list(prefix) if ref.key.endswith(".json")]
        records = [ReviewRecord.from_json(self.store.get_bytes(key)) for key in keys]
        return {
            "reviews": prefix,
            "papers": len(records),
            "well_formed": sum(r.well_formed for r in records),
            "cut_short": sum(r.reached_budget for r in records),
            "unwritten_aspects": sum(len(r.unwritten_aspects) for r in records),
        }

    def _record_run(
        self, step: str, print_: str, run_id: str, seconds: float | None, values: dict[str, Any]
    ) -> None:
        status = json.loads(self.store.get_bytes(f"runs/{run_id}/status.json"))
        self.state.record(
            step,
            {
                "fingerprint": print_,
                "run": f"runs/{run_id}",
                "values": values,
                "best": status.get("best"),
                "steps": status.get("step"),
                "seconds": None if seconds is None else round(seconds, 1),
            },
        )
        self._say(step, f"runs/{run_id} best {status.get('best')}")

    def _review(
        self, name: str, system: SystemSpec, papers: tuple[Path, list[str]] | None, made: dict[str, str]
    ) -> str:
        """reviews/<id>.<system>-<fp>/: every evaluation paper reviewed by this system."""
        run_id = made[self._run_step(system.run)] if system.run else None
        if system.decodings:  # the decoding its `choose:` step kept
            chosen = system.decodings[int(made[f"choose:{name}"])]
            system = system.model_copy(update={"decoding": chosen, "decodings": []})
        if papers is None:  # only the plan lists steps without papers, and it never runs them
            raise FailedPrecondition(f"review:{name} was planned without the evaluation papers")
        return self._reviews_by(f"review:{name}", f"{self.spec.id}.{name}", run_id, system, papers)

    def _validate_decoding(self, system: SystemSpec, index: int, label: str, made: dict[str, str]) -> str:
        """A candidate decoding's reviews of the system's run's validation papers (its λ kept)."""
        trial = system.model_copy(update={"decoding": system.decodings[index], "decodings": []})
        run = str(system.run)  # a system with decodings is a trained one (SystemSpec checks)
        return self._review_validation(f"validate:{label}", run, made[self._run_step(run)], trial)

    def _choose_decoding(self, name: str, system: SystemSpec, labels: list[str], made: dict[str, str]) -> str:
        """The index of the decoding with the most well-formed validation reviews (a tie: the first)."""
        candidates = [
            {
                "label": label,
                "decoding": d.model_dump(mode="json"),
                "validation": self._form_of(made[f"validate:{label}"]),
            }
            for label, d in zip(labels, system.decodings, strict=True)
        ]
        index = most_well_formed([c["validation"] for c in candidates])
        step, print_ = f"choose:{name}", fingerprint([c["validation"]["reviews"] for c in candidates])
        if not self.state.done(step, print_):
            self.state.record(
                step,
                {
                    "fingerprint": print_,
                    "by": "most well-formed reviews of the validation papers, then the first listed",
                    "chosen": candidates[index]["decoding"],
                    "index": index,
                    "candidates": candidates,
                },
            )
        form = candidates[index]["validation"]
        self._say(step, f"{labels[index]} ({form['well_formed']} of {form['papers']} well formed)")
        return str(index)

    def _reviews_by(
        self,
        step: str,
        folder_name: str,
        run_id: str | None,
        system: SystemSpec,
        papers: tuple[Path, list[str]],
    ) -> str:
        """reviews/<folder_name>-<fp>/: `papers` reviewed by the system's model (`run_id`'s when trained),
        the fingerprint of model, settings and papers in the folder's name."""
        folder, ids = papers
        decoding = self.spec.decoding_of(system)
        model = f"runs/{run_id}" if run_id else f"base:{system.base}"
        aspects = self._aspects_of(system)
        print_ = fingerprint(
            {
                "model": model,
                "aspects": aspects,
                "refusal_penalty": system.refusal_penalty,
                "decoding": decoding.model_dump(mode="json"),
                "papers": ids,
            }
        )
        prefix = f"reviews/{folder_name}-{print_[:6]}"
        self._targets[step] = (prefix, len(ids))
        missing = [p for p in ids if not self.store.exists(f"{prefix}/{p}.json")]
        if not missing:
            if self.state.done(step, print_) is None:
                self._record_review(step, print_, prefix, model, ids, None)
            self._say(step, f"reused {prefix} ({len(ids)} papers)")
            return prefix
        engine = self._model_dir(run_id, system)
        args = [
            "review", "--batch", str(folder), "--system", prefix.removeprefix("reviews/"),
            "--store", self.store.uri, "--concurrency", str(self.options.concurrency),
            "--engine-model", str(engine), "--refusal-penalty", f"{system.refusal_penalty:g}",
            "--temperature", f"{decoding.temperature:g}", "--top-p", f"{decoding.top_p:g}",
            "--repetition-penalty", f"{decoding.repetition_penalty:g}",
            "--max-new-tokens", str(decoding.max_new_tokens),
        ]  # fmt: skip
        if decoding.seed is not None:
            args += ["--seed", str(decoding.seed)]
        if aspects == "4":
            args.append("--four-aspects")
        began = time.monotonic()
        self.verbs.run(step, args)
        took = time.monotonic() - began
        self._record_review(step, print_, prefix, model, ids, (took, missing))
        return prefix

    def _record_review(
        self,
        step: str,
        print_: str,
        prefix: str,
        model: str,
        ids: list[str],
        timing: tuple[float, list[str]] | None,
    ) -> None:
        entry: dict[str, Any] = {"fingerprint": print_, "reviews": prefix, "model": model, "papers": len(ids)}
        if timing is not None:
            took, written = timing
            tokens = sum(
                ReviewRecord.from_json(self.store.get_bytes(f"{prefix}/{p}.json")).generated_tokens or 0
                for p in written
            )
            entry |= {
                "seconds": round(took, 1),
                "reviewed_now": len(written),
                "generated_tokens": tokens,
                "tokens_per_s": round(tokens / took, 1) if took > 0 else None,
                "concurrency": self.options.concurrency,
                "parallel_jobs": self.options.jobs,
            }
        self.state.record(step, entry)
        self._say(step, f"{prefix}: {len(ids)} papers")

    def _evaluate(self, human: str, reviews: dict[str, str]) -> str:
        """evaluations/<eval-id>/: every system scored against the human points, in one evaluation."""
        evaluation = self.spec.evaluation
        step = "eval"
        contents = {  # a review rewritten since the last evaluation makes it stale
            name: sorted((ref.key, ref.sha256) for ref in self.store.list(prefix))
            for name, prefix in reviews.items()
        }
        print_ = fingerprint({"evaluation": evaluation.model_dump(mode="json"), "human": human, **contents})
        record = self.state.done(step, print_)
        if record and self.store.exists(f"{record['evaluation']}/report.json"):
            self._say(step, f"reused {record['evaluation']}")
            return record["evaluation"]
        args = ["eval", "run", "--human", self.store.uri_for(human), "--out", self.store.uri]
        for name, prefix in reviews.items():
            args += ["--system", f"{name}={self.store.uri_for(prefix)}"]
        args += ["--matcher", evaluation.matcher, "--bootstrap", str(evaluation.bootstrap)]
        args += ["--seed", str(evaluation.seed), *self.verbs.server("evaluation")]
        began = time.monotonic()
        with self.console.status(f"evaluating {len(reviews)} systems against the human points…"):
            result = self.verbs.run_json(step, args)
        key = f"evaluations/{result['eval_id']}"
        self.state.record(
            step, {"fingerprint": print_, "evaluation": key, "seconds": round(time.monotonic() - began, 1)}
        )
        self._say(step, key)
        return key

    # ---------------------------------------------------------------- helpers
    def _schedule(self, steps: list[Step]) -> dict[str, str]:
        """Each step once the steps it needs have made their results, `--jobs` at a time, in the given
        order (trainings first: a review waits only for its own run), with one progress line per step.
        A failed step lets running ones finish (they are recorded) and starts no other."""
        made: dict[str, str] = {}
        failure: Exception | None = None
        waiting = list(steps)
        running: dict[Future, str] = {}
        with ProgressDisplay(self.console) as progress, ThreadPoolExecutor(self.options.jobs) as pool:
            while waiting or running:
                ready = [s for s in waiting if all(n in made for n in s.needs)] if failure is None else []
                for step in ready[: self.options.jobs - len(running)]:
                    waiting.remove(step)
                    running[pool.submit(step.work, dict(made))] = step.name
                if not running:
                    break
                finished, _ = wait(running, timeout=2.0, return_when=FIRST_COMPLETED)
                for future in finished:
                    name = running.pop(future)
                    try:
                        made[name] = future.result()
                    except ReviewStackError as exc:
                        failure = failure or exc
                    except Exception as exc:  # a bug: named by its step, the traceback under --debug
                        failure = failure or FailedPrecondition(
                            f"{name} failed: {type(exc).__name__}: {exc}; what finished is recorded and a "
                            "rerun resumes from there (--debug shows the traceback)"
                        )
                        failure.__cause__ = exc
                for step in steps:
                    progress.update(step.name, *self._progress_of(step.name, step.name in made))
        if failure is not None:
            raise failure
        if waiting:  # only when a step needs one that is not in the plan: a bug, not a user error
            raise FailedPrecondition(f"steps never ready: {', '.join(s.name for s in waiting)}")
        return made

    def _progress_of(self, step: str, finished: bool) -> tuple[int, int, str]:
        """How far a running step is, read from the store: its run's status, its review folder's files."""
        if finished:
            return 1, 1, "done"
        target = self._targets.get(step)
        if target is None:
            return 0, 0, "waiting"
        where, total = target
        try:
            if step.startswith("train:"):
                status = json.loads(self.store.get_bytes(f"{where}/status.json"))
                return status.get("step", 0), status.get("total_steps") or 0, status.get("state", "")
            count = sum(1 for _ in self.store.keys(where))
            return count, total, f"{count} of {total} reviewed"
        except (NotFound, json.JSONDecodeError, OSError):
            return 0, total, "starting"

    def _recorded_dataset(self, name: str) -> str:
        step = self.state.data["steps"].get(f"data:{name}")
        if not step:
            raise FailedPrecondition(f"dataset {name} has not been built")
        return step["dataset"]

    def _run_state(self, run_id: str) -> str:
        key = f"runs/{run_id}/status.json"
        if not self.store.exists(key):
            return "absent"
        return json.loads(self.store.get_bytes(key)).get("state", "unknown")

    def _base_model(self, base: str) -> str:
        if base == EMBEDDED:
            from reviewstack.common.embedded_model import materialise_embedded_model

            with self.console.status("unpacking the embedded base model (first use only)…"):
                return str(materialise_embedded_model())
        path = self.spec.path(base)
        if not (path / "config.json").is_file():
            raise NotFound(f"base model {path} is not a model folder (no config.json)")
        return str(path)

    def _model_dir(self, run_id: str | None, system: SystemSpec) -> Path:
        """A local folder of the model a system reviews with: a run's merged/ (downloaded from an S3
        store once), merged again from its best adapter when only that is left, or a base model."""
        if not run_id or not system.run:
            return Path(self._base_model(system.base or EMBEDDED))
        # several steps review with one run at once (its validation decodings): one fetches, the rest wait
        with self._model_locks.setdefault(run_id, threading.Lock()):
            return self._fetch_model(run_id, system.run)

    def _fetch_model(self, run_id: str, run: str) -> Path:
        prefix = f"runs/{run_id}/merged"
        if self._complete(prefix):
            if isinstance(self.store, LocalStore):  # the engine reads the folder where it is
                return self.store.root.joinpath(*prefix.split("/"))
            target = self.work / "models" / run_id
            if not (target / "config.json").is_file():
                shutil.rmtree(target, ignore_errors=True)
                self.store.download_dir(prefix, target)
            return target
        return self._merge_again(run_id, self.spec.runs[run].base_model)

    def _complete(self, prefix: str) -> bool:
        """Every file a publication's manifest lists is there (a store copied without weights is not)."""
        if not self.store.exists(f"{prefix}/manifest.json"):
            return False
        listed = self.store.read_manifest(prefix).get("files", {})
        return bool(listed) and all(self.store.exists(f"{prefix}/{name}") for name in listed)

    def _merge_again(self, run_id: str, base_model: str) -> Path:
        """merged/ made anew from best/ with `reviewstack-merge`, the PI factor read from the merged
        model's manifest: an experiment carried to another machine with its adapters but not its
        merged weights (~10 MB where those are ~270 MB for a 135M model) resumes its reviews there."""
        from reviewstack.common.adapter_card import AdapterCard

        run = f"runs/{run_id}"
        target = self.work / "models" / run_id
        if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
            return target  # merged by an earlier step of this invocation or an earlier one
        needed = (f"{run}/best/adapter_config.json", f"{run}/merged/manifest.json", f"{run}/spec.json")
        if not all(self.store.exists(key) for key in needed):
            raise FailedPrecondition(
                f"{run} has no merged model and no adapter to merge again: train the run with merge: true"
            )
        merged, spec = (
            self.store.read_manifest(f"{run}/merged"),
            json.loads(self.store.get_bytes(f"{run}/spec.json")),
        )
        adapter = self.work / "adapters" / run_id
        if not (adapter / "adapter_config.json").is_file():
            shutil.rmtree(adapter, ignore_errors=True)
            self.store.download_dir(f"{run}/best", adapter)
        AdapterCard(
            base_model=str(merged["base_model"]),
            position_interpolation=float(merged["pi_factor"]),
            target_context=spec["target_context"],
            max_prompt_length=spec["max_prompt_length"],
            max_response_length=spec["max_response_length"],
            lineage={"run": run},
        ).write(adapter)
        arguments = [str(adapter), "--out", str(target), "--base", self._base_model(base_model)]
        self.verbs.run(f"merge:{run_id}", arguments, module="reviewstack.trainjob.merge")
        return target

    def _aspects_of(self, system: SystemSpec) -> str:
        if system.run is None:
            return self.spec.datasets[self.spec.evaluation.human].aspects
        return self.spec.datasets[self.spec.runs[system.run].dataset].aspects

    def _papers(self, dataset: str, split: str, max_papers: int | None) -> tuple[Path, list[str]]:
        """A split's papers as files for `reviewstack review --batch`: the dataset's own (cleaned) text of
        each, so every system reads what training read."""
        records = _records(self.store, f"{dataset}/{split}.jsonl")
        records.sort(key=lambda r: r["paper_id"])
        if max_papers:
            records = records[:max_papers]
        if not records:
            raise FailedPrecondition(f"{dataset} has no {split} papers to review")
        folder = self.work / "papers" / fingerprint([dataset, split, max_papers])
        folder.mkdir(parents=True, exist_ok=True)
        for record in records:
            path = folder / f"{record['paper_id']}.md"
            if not path.exists():
                path.write_text(paper_from_messages(record["messages"]))
        return folder, [r["paper_id"] for r in records]

    def _check_disjoint(self, run: str, dataset: str, papers: tuple[Path, list[str]]) -> None:
        trained = {
            r["paper_id"]
            for split in ("train", "val")
            for r in _records(self.store, f"{dataset}/{split}.jsonl")
        }
        overlap = sorted(trained & set(papers[1]))
        if overlap:
            raise FailedPrecondition(
                f"run {run} trains or validates on {len(overlap)} of the evaluation papers "
                f"({', '.join(overlap[:3])}…): build its dataset with the same split and seed as "
                f"{self.spec.evaluation.human}"
            )

    def _say(self, step: str, message: str) -> None:
        self.console.print(f"[bold]{escape(step)}[/] {escape(message)}", soft_wrap=True)


SELECTED_BY = {
    "validation_loss": "lowest validation loss",
    "well_formed": "most well-formed reviews of the validation papers, then lowest validation loss",
}


def choose(candidates: list[dict[str, Any]], by: str) -> dict[str, Any]:
    """The preferred candidate: lowest validation loss, or, by form, the largest share of well-formed
    validation reviews with the lower loss breaking a tie (candidates review the same papers)."""
    if by == "well_formed":
        return max(candidates, key=lambda c: (_well_formed_share(c["validation"]), -c["best"]["val_loss"]))
    return min(candidates, key=lambda c: c["best"]["val_loss"])


def most_well_formed(forms: list[dict[str, Any]]) -> int:
    """Index of the validation review set with the largest well-formed share; the first on a tie."""
    shares = [_well_formed_share(form) for form in forms]
    return shares.index(max(shares))


def _well_formed_share(form: dict[str, Any]) -> float:
    return form["well_formed"] / max(1, form["papers"])


def _records(store: ArtifactStore, key: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in store.get_bytes(key).decode().splitlines() if line.strip()]


__all__ = ["SELECTED_BY", "STAGES", "ExperimentRunner", "Options", "State", "choose", "most_well_formed"]
