"""How the recipe's model is run, stepped, saved and restored: one small interface, two implementations.

- `SingleProcess`: plain PyTorch in one process — AdamW (fused on GPUs), clipping, the LR schedule, the
  trainable weights and optimizer state in each checkpoint. The fastest path on one GPU.
- `Zero3`: DeepSpeed ZeRO-3 over the processes torchrun started (zero.py), in one of its layouts
  (zero3, zero3-replicated, zero3-hpz) — weights partitioned as they load, the update applied by the
  engine at the last micro-batch, every rank's shard in each checkpoint (resumable by the same number
  of processes only, in any of the three).

The recipe calls the same methods in the same order on either, so its loop has no branch on the layout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from reviewstack.common.runspec import Layout, TrainSpec
from reviewstack.common.store import ArtifactStore
from reviewstack.trainjob import checkpoint
from reviewstack.trainjob.kernels import use_liger
from reviewstack.trainjob.loss import ResponseLoss, ResponseLossModel
from reviewstack.trainjob.model import load_model, parameter_groups

Schedule = Callable[[Any], Any]  # optimizer → LR scheduler


class Execution(Protocol):
    model: Any  # the (PEFT) model whose trainable weights are the run's
    loss_model: ResponseLossModel  # its forward returns (summed response loss, response tokens)
    scheduler: Any
    pi_factor: float | None

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]: ...

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradients of one micro-batch's (scaled) loss."""

    def step(self) -> float:
        """End of the accumulated batch: clip, update, schedule; the gradient norm."""

    def save(self, store: ArtifactStore, run_prefix: str, state: checkpoint.TrainerState) -> None: ...

    def load(self, store: ArtifactStore, prefix: str) -> checkpoint.TrainerState: ...

    def trainable_state(self) -> dict[str, torch.Tensor] | None:
        """Whole copies of the trainable weights for best/ (None: take them from the model as it is)."""

    def release(self) -> None:
        """Before rank 0 loads a whole base model to merge: leave whatever would partition it."""


class SingleProcess:
    def __init__(self, spec: TrainSpec, device: torch.device, dtype: torch.dtype, schedule: Schedule) -> None:
        self.spec = spec
        self.model, self.pi_factor = load_model(spec, device, dtype)
        self.loss_model = ResponseLossModel(self.model, ResponseLoss(use_liger(spec.liger, device)))
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.model, spec),
            lr=spec.learning_rate,
            weight_decay=spec.weight_decay,
            fused=device.type == "cuda",
        )
        self.scheduler = schedule(self.optimizer)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return self.loss_model(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], self.spec.max_grad_norm
        )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def save(self, store: ArtifactStore, run_prefix: str, state: checkpoint.TrainerState) -> None:
        checkpoint.save_checkpoint(store, run_prefix, self.model, self.optimizer, self.scheduler, state)

    def load(self, store: ArtifactStore, prefix: str) -> checkpoint.TrainerState:
        return checkpoint.load_checkpoint(store, prefix, self.model, self.optimizer, self.scheduler)

    def trainable_state(self) -> dict[str, torch.Tensor] | None:
        return None

    def release(self) -> None:
        pass


class Zero3:
    def __init__(
        self,
        spec: TrainSpec,
        layout: Layout,
        device: torch.device,
        dtype: torch.dtype,
        schedule: Schedule,
        accumulation: int,
        rank: int,
        world_size: int,
        gpus_per_node: int,
        config_overrides: dict[str, Any] | None = None,
    ) -> None:
        """`layout`: zero3, zero3-replicated or zero3-hpz (zero.build_config); `config_overrides` are
        merged into the DeepSpeed config built from the spec (benchmarks)."""
        from reviewstack.trainjob import zero

        self.rank, self.world_size, self.layout = rank, world_size, layout
        zero.init_distributed(device)
        built = zero.build_config(spec, layout, accumulation, world_size, gpus_per_node, device, dtype)
        config = _merged(built, config_overrides or {})
        self._hf_ds_config = zero.hf_config(config)  # held: transformers keeps a weak reference
        self.model, self.pi_factor = load_model(spec, device, dtype, zero3=True)
        # Liger's fused loss reads lm_head's weight outside the module, where ZeRO-3 has not gathered
        # it: the plain head on the response positions (as fast at ~1k labelled tokens) instead
        self.loss_model = ResponseLossModel(self.model, ResponseLoss(use_liger=False))
        self.engine, self.scheduler = zero.initialize(self.loss_model, config, schedule)
        if rank == 0:
            zero.log_weight_placement(self.model, layout)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return self.engine(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()  # DeepSpeed applies the update at the last micro-batch only

    def step(self) -> float:
        if not self.engine.was_step_applied():
            raise RuntimeError("DeepSpeed's accumulation boundary is out of step with the recipe's")
        return float(self.engine.get_global_grad_norm())

    def save(self, store: ArtifactStore, run_prefix: str, state: checkpoint.TrainerState) -> None:
        checkpoint.save_zero_checkpoint(
            store, run_prefix, self.engine, self.model, state, self.rank, self.world_size, self.layout
        )

    def load(self, store: ArtifactStore, prefix: str) -> checkpoint.TrainerState:
        return checkpoint.load_zero_checkpoint(store, prefix, self.engine, self.model, self.rank)

    def trainable_state(self) -> dict[str, torch.Tensor] | None:
        from reviewstack.trainjob import zero

        return zero.gathered_trainable_state(self.model, self.rank)  # every rank gathers, rank 0 keeps

    def release(self) -> None:
        from reviewstack.trainjob import zero

        zero.release()


def _merged(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            _merged(config[key], value)
        else:
            config[key] = value
    return config
