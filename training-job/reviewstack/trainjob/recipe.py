"""The fine-tuning recipe: one class, read top to bottom — __init__ → preflight → setup (data, model,
resume) → train → finish.

Supported: LoRA (default), QLoRA (bitsandbytes + GPU), full fine-tuning; Position Interpolation to the
target context; flash attention 2 when importable, SDPA otherwise; gradient checkpointing; loss on the
response only with logits only at labelled positions (Liger's fused kernel when installed); resume from
the latest complete checkpoint of the same run id; best-by-validation-loss `best/`; `merged/` weights.
How the model is stepped, saved and restored is execution.py's, in the layout the spec names or
`auto` picks from the predicted peak memory (layout.py): one process in plain PyTorch, or DeepSpeed
ZeRO-3 over the processes torchrun started (NCCL on GPUs, gloo on CPUs, each rank's data and optimizer
shard, losses and counts summed over ranks, checkpoints resumable by the same number of processes only)
with the weights sharded, kept whole on every GPU, or given a second shard per node. On SIGTERM all ranks
stop after the same step and checkpoint; torchrun kills them 30 s after passing SIGTERM on, so give it
`--shutdown-timeout` longer than a step plus a checkpoint. Not supported, refused at start: QLoRA without
a GPU; QLoRA or trainable tokens over several processes. GPU speed-ups that keep the maths (Liger
kernels, LoRA in bf16 under autocast, cuDNN attention) are in kernels.py.
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
import resource
import signal
import time
from itertools import islice
from typing import Any

import numpy as np
import torch

from reviewstack.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from reviewstack.common.logging import get_logger
from reviewstack.common.runspec import TrainSpec
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import open_store
from reviewstack.common.tokenizer import load_tokenizer
from reviewstack.trainjob import checkpoint, layout, zero
from reviewstack.trainjob.data import (
    EpochSampler,
    Example,
    ExampleBuilder,
    build_examples,
    collate,
    open_dataset,
)
from reviewstack.trainjob.execution import Execution, SingleProcess, Zero3
from reviewstack.trainjob.kernels import step_context
from reviewstack.trainjob.model import check_base_model
from reviewstack.trainjob.reporting import RunReporter
from reviewstack.trainjob.rope import interpolation_factor

log = get_logger(__name__)


class Preempted(Exception):
    """SIGTERM arrived (a pod being evicted): the run saved a checkpoint and stops to be restarted."""


class FineTuneRecipe:
    def __init__(self, spec: TrainSpec, store_settings: StoreSettings | None = None) -> None:
        self.spec = spec
        self.store_settings = store_settings or StoreSettings()
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if spec.effective_batch_size % (spec.micro_batch_size * self.world_size):
            raise InvalidArgument(
                f"effective_batch_size {spec.effective_batch_size} is not a multiple of micro_batch_size × "
                f"processes ({spec.micro_batch_size} × {self.world_size}): change one of them"
            )
        if self.world_size > 1 or spec.layout.startswith("zero3"):
            _check_deepspeed()
        self.device = _device(spec.device)
        self.dtype = _dtype(spec.precision, self.device)
        zero.select_accelerator(self.device)  # before anything imports DeepSpeed
        _seed_everything(spec.seed)
        self._stop = False

    # -- before any training --------------------------------------------------------------------------
    def preflight(self) -> None:
        """Every check that can fail without training: the errors a user can fix come here, in seconds."""
        from transformers import AutoConfig

        self.dataset = open_dataset(self.spec.dataset, self.store_settings)
        check_base_model(self.spec.base_model)
        self.tokenizer = load_tokenizer(self.spec.base_model)
        config = AutoConfig.from_pretrained(self.spec.base_model, local_files_only=True)
        interpolation_factor(config, self.spec.target_context, self.spec.pi_factor)
        built_for = self.dataset.manifest.get("max_prompt_length", 0) + self.dataset.manifest.get(
            "max_response_length", 0
        )
        if built_for > self.spec.target_context:
            raise InvalidArgument(
                f"the dataset's prompts and responses run to {built_for} tokens but target_context is "
                f"{self.spec.target_context}: raise target_context or rebuild the dataset with shorter "
                "--max-prompt-length"
            )
        if not self.dataset.records["train"]:
            raise InvalidArgument(f"dataset {self.dataset.uri} has no training records")
        self.output = open_store(self.spec.output, self.store_settings)
        self.output.check_writable()
        self.run_prefix = f"runs/{self.spec.run_id}"
        if self.rank == 0:
            self._claim_run_id()
        self.latest = checkpoint.latest_checkpoint(self.output, self.run_prefix)
        self._choose_layout(config.to_dict())
        if self.latest:  # optimizer state fits only the layout that wrote it
            checkpoint.check_resumable(self.output, self.latest, self.layout, self.world_size)

    def _choose_layout(self, config: dict[str, Any]) -> None:
        """The spec's layout, or auto's pick by predicted peak memory; recorded in the run's layout.json."""
        resumed = checkpoint.checkpoint_layout(self.output, self.latest) if self.latest else None
        if self.world_size > 1:  # the ranks agree on the smallest GPU among them
            zero.init_distributed(self.device)
        self.plan = layout.choose(self.spec, config, self.device, self.world_size, resumed)
        self.layout = self.plan.chosen
        if self.rank == 0:
            layout.write_plan(self.output, self.run_prefix, self.plan)

    # -- building the parts, in order ---------------------------------------------------------------
    def _claim_run_id(self) -> None:
        """A run id names one spec: record ours if the run is new, else it must be the one stored (a job
        started by hand with another spec must not rewrite what a resumed run reads)."""
        key = f"{self.run_prefix}/spec.json"
        try:
            self.output.put_bytes(key, self.spec.model_dump_json(indent=2).encode() + b"\n", exclusive=True)
        except AlreadyExists:
            if TrainSpec.model_validate_json(self.output.get_bytes(key)) != self.spec:
                raise InvalidArgument(
                    f"{self.output.uri_for(key)} holds another spec for run {self.spec.run_id}: a run id "
                    "names one spec; use another run_id, or resume with the stored spec"
                ) from None

    def setup(self) -> None:
        self._setup_data()  # first: the step count, and so the LR schedule, depends on it
        self._setup_model()
        self._resume()
        log.info(
            "setup done",
            train=len(self.train_examples),
            val=len(self.val_examples),
            total_steps=self.total_steps,
            accumulation=self.accumulation,
            processes=self.world_size,
        )

    def _setup_data(self) -> None:
        spec = self.spec
        builder = ExampleBuilder(
            self.tokenizer, self.dataset.schema, spec.max_prompt_length, spec.max_response_length
        )
        self.train_examples = build_examples(self.dataset.records["train"], builder)
        val_records = self.dataset.records["val"][: spec.max_eval_examples]
        self.val_examples = build_examples(val_records, builder) if val_records else []
        self.sampler = EpochSampler(
            len(self.train_examples), spec.micro_batch_size, spec.seed, self.rank, self.world_size
        )
        self.accumulation = spec.effective_batch_size // (spec.micro_batch_size * self.world_size)
        self.steps_per_epoch = max(1, self.sampler.batches_per_epoch // self.accumulation)
        self.total_steps = math.ceil(spec.epochs * self.steps_per_epoch)
        if spec.max_steps:
            self.total_steps = min(self.total_steps, spec.max_steps)

    def _setup_model(self) -> None:
        """The model, its loss, optimizer and schedule, run as the spec's layout says (execution.py)."""
        from transformers import get_scheduler

        def schedule(optimizer: Any) -> Any:
            return get_scheduler(
                self.spec.lr_scheduler,
                optimizer,
                num_warmup_steps=int(self.spec.warmup_ratio * self.total_steps),
                num_training_steps=self.total_steps,
            )

        if self.layout != "single":
            self.execution: Execution = Zero3(
                self.spec,
                self.layout,
                self.device,
                self.dtype,
                schedule,
                self.accumulation,
                self.rank,
                self.world_size,
                self.plan.topology.gpus_per_node,
            )
        else:
            self.execution = SingleProcess(self.spec, self.device, self.dtype, schedule)
        self.model, self.pi_factor = self.execution.model, self.execution.pi_factor
        self.reporter = RunReporter(self.output, self.run_prefix, self.total_steps, enabled=self.rank == 0)

    def _resume(self) -> None:
        """From the latest complete checkpoint of this run id, if there is one."""
        self.state = checkpoint.TrainerState(0, self.sampler.state_dict(), None, None, 0)
        if not self.latest:
            return
        self.state = self.execution.load(self.output, self.latest)
        self.sampler.load_state_dict(self.state.sampler)
        self.reporter.resume(self.state.step)
        self.reporter.best = _best(self.state)
        log.info("resumed", checkpoint=self.output.uri_for(self.latest), step=self.state.step)

    # -- the loop ------------------------------------------------------------------------------------
    def train(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        batches = iter(self.sampler)
        pad_id = self.tokenizer.tokenizer.pad_token_id
        pad_id = self.tokenizer.tokenizer.eos_token_id if pad_id is None else pad_id
        self.execution.loss_model.train()
        for step in range(self.state.step + 1, self.total_steps + 1):
            started = time.perf_counter()
            lr = self.execution.scheduler.get_last_lr()[
                0
            ]  # the rate this step's update uses (read before it moves)
            micro = [
                [self.train_examples[i] for i in indices] for indices in islice(batches, self.accumulation)
            ]
            # normalised by the response tokens of the whole accumulated batch on all ranks, so that every
            # token weighs the same; × world size undoes the mean DeepSpeed takes over ranks' gradients
            response_tokens, tokens = map(
                int,
                self._sum_over_ranks(
                    sum(e.response_tokens for batch in micro for e in batch),
                    sum(len(e.input_ids) for batch in micro for e in batch),
                ),
            )
            scale = self.world_size / max(response_tokens, 1)
            loss_sum = 0.0
            for batch in micro:
                loss_sum += self._backward(batch, pad_id, scale)
            grad_norm = self.execution.step()
            loss_sum, stopping = self._sum_over_ranks(loss_sum, float(self._stop))
            stop = stopping > 0  # agreed by all ranks: one that stopped alone would leave the others hanging
            self.state = checkpoint.TrainerState(
                step,
                self.sampler.state_dict(),
                self.state.best_step,
                self.state.best_val_loss,
                self.state.tokens_seen + tokens,
            )
            row = {
                "step": step,
                "epoch": round(step / self.steps_per_epoch, 4),
                "loss": loss_sum / max(response_tokens, 1),
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": tokens / (time.perf_counter() - started),
                "peak_mem_gib": _peak_memory_gib(self.device),
            }
            if self.device.type == "cuda":  # what the layout was chosen by, beside what rank 0 measured
                row["predicted_peak_gib"] = round(self.plan.chosen_prediction.total, 2)
            if step % self.spec.eval_steps == 0 or step == self.total_steps:
                row["val_loss"] = self.evaluate(pad_id)
                self._maybe_best(step, row["val_loss"])
            saving = step % self.spec.save_steps == 0 or step == self.total_steps or stop
            self.reporter.log(row, force="val_loss" in row or saving)  # metrics durable up to each checkpoint
            if step % self.spec.logging_steps == 0 and self.rank == 0:
                log.info("step", **{k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()})
            if saving:
                self.save()
            if stop:
                raise Preempted(f"stopped by SIGTERM after step {step}; a restart resumes from it")

    def _backward(self, batch: list[Example], pad_id: int, scale: float) -> float:
        """One micro-batch's forward and backward; its summed loss.

        Both inside the step context: gradient checkpointing re-runs block forwards during backward."""
        with step_context(self.device, self.dtype):
            summed, _ = self.execution.forward(_to(collate(batch, pad_id), self.device))
            self.execution.backward(summed * scale)
        return float(summed.detach())

    def _sum_over_ranks(self, *values: float) -> list[float]:
        if self.world_size == 1:
            return list(values)
        totals = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(totals)
        return totals.tolist()

    @torch.no_grad()
    def evaluate(self, pad_id: int) -> float:
        """Mean validation loss per response token (the training loss when there is no val split).

        Each rank takes every world-size-th example; all ranks run the same number of forwards (a ZeRO-3
        forward is collective), one with nothing left repeats an example and does not count it."""
        examples = self.val_examples or self.train_examples[: self.spec.max_eval_examples or 16]
        mine = examples[self.rank :: self.world_size]
        size = self.spec.micro_batch_size
        self.execution.loss_model.eval()
        total, tokens = 0.0, 0
        with step_context(self.device, self.dtype):
            for start in range(0, math.ceil(len(examples) / self.world_size), size):
                batch = mine[start : start + size]
                summed, n = self.execution.forward(_to(collate(batch or examples[:1], pad_id), self.device))
                if batch:
                    total, tokens = total + float(summed), tokens + n
        self.execution.loss_model.train()
        total, tokens = self._sum_over_ranks(total, tokens)
        return total / max(tokens, 1)

    def _maybe_best(self, step: int, val_loss: float) -> None:
        if self.state.best_val_loss is not None and val_loss >= self.state.best_val_loss:
            return  # the same decision on every rank: val_loss is summed over all of them
        self.state = checkpoint.TrainerState(step, self.state.sampler, step, val_loss, self.state.tokens_seen)
        self.reporter.best = _best(self.state)
        weights = self.execution.trainable_state()  # partitioned ones are gathered by every rank
        if self.rank == 0:
            checkpoint.save_best(
                self.output, self.run_prefix, self.model, self.tokenizer.tokenizer, step, val_loss, weights
            )

    def save(self) -> None:
        self.execution.save(self.output, self.run_prefix, self.state)

    # -- after the loop ------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Publish merged/ from best/ and mark the run succeeded; returns the run's summary."""
        summary = {
            "run": self.output.uri_for(self.run_prefix),
            "steps": self.state.step,
            "best_step": self.state.best_step,
            "best_val_loss": self.state.best_val_loss,
            "final_loss": self.reporter.latest.get("loss"),
            "pi_factor": self.pi_factor,
            "layout": self.layout,
        }
        memory = layout.check(self.plan, layout.measured_peaks(self.device, self.world_size))
        if memory:
            summary["peak_gib"], summary["predicted_peak_gib"] = memory["peak_gib"], memory["predicted_gib"]
        self.execution.release()  # rank 0's merge loads a whole base model, which must not be partitioned
        if self.rank == 0:
            layout.write_plan(self.output, self.run_prefix, self.plan, memory)
            if self.spec.merge:
                lineage = {
                    "run_id": self.spec.run_id,
                    "base_model": self.spec.base_model,
                    "dataset": self.dataset.uri,
                    "dataset_version": self.dataset.manifest.get("version"),
                    "best_step": self.state.best_step,
                    "best_val_loss": self.state.best_val_loss,
                    "pi_factor": self.pi_factor,
                    "target_context": self.spec.target_context,
                }
                summary["merged"] = self.output.uri_for(
                    checkpoint.save_merged(
                        self.output, self.run_prefix, self.spec, self.pi_factor, self.dtype, lineage
                    )
                )
            summary["best"] = self.output.uri_for(f"{self.run_prefix}/best")
            self.reporter.write("succeeded", self.state.step, "training finished")
        return summary

    def run(self) -> dict[str, Any]:
        self.preflight()
        self.setup()
        try:
            self.train()
        except Preempted as exc:
            self.reporter.write("stopped", self.state.step, str(exc))
            raise
        except BaseException as exc:
            if hasattr(self, "reporter"):
                self.reporter.write("failed", self.state.step, f"{type(exc).__name__}: {exc}")
            raise
        return self.finish()

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM: saving a checkpoint after the current step")
        self._stop = True


def _check_deepspeed() -> None:
    if importlib.util.find_spec("deepspeed") is None:
        raise FailedPrecondition(
            "several processes and the zero3 layouts need the deepspeed package: pip install "
            "'reviewstack-trainjob[deepspeed]', or run one process with layout single or auto"
        )


def _best(state: checkpoint.TrainerState) -> dict[str, Any] | None:
    return None if state.best_step is None else {"step": state.best_step, "val_loss": state.best_val_loss}


def _device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise FailedPrecondition(
            "the spec asks for device=cuda but this machine has no GPU (torch sees none)"
        )
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def _dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise FailedPrecondition("this GPU has no bf16; use precision=fp32")
        return torch.bfloat16
    return torch.float32


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB → GiB (process RSS)
