"""The refusal penalty inside text-generation-inference (TGI) 3.3.x, patched in at import time.

TGI has no logits-processor hook and ignores `logit_bias`, so `activate()` (run at interpreter start by
the `.pth` file the image installs) patches its token choosers when a shard imports them, and carries
each row's tracker across batch concatenation. λ is one value per deployment
(`REVIEWSTACK_REFUSAL_PENALTY`, default 0: nothing is installed): TGI's request proto has no spare field
to carry it per request. Which TGI functions are patched, why each is exact (speculation, chunked
prefill, filtering) and the TGI source read for it: docs/penalty-engines.md. `python -m
reviewstack.penalty.tgi --check`, run in the image build, checks the installed TGI against the call
signatures the patch relies on. Nothing here imports torch or TGI at import time.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.abc
import inspect
import math
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

from reviewstack.penalty.core import PenaltyTable, RowTracker

ENV_VAR = "REVIEWSTACK_REFUSAL_PENALTY"
TOKENS_MODULE = "text_generation_server.utils.tokens"
FLASH_MODULE = "text_generation_server.models.flash_causal_lm"
#: attribute a patched chooser keeps its refusal warper under (None where it has no tokenizer)
ATTRIBUTE = "reviewstack_refusal"
_PATCHED = "__reviewstack_refusal_penalty__"  # on a patched class: the λ it was patched with


def penalty_from_env(environ: Mapping[str, str] | None = None) -> float:
    """λ from `REVIEWSTACK_REFUSAL_PENALTY`; unset or empty means 0."""
    raw = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_VAR}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{ENV_VAR} must be a finite number >= 0, got {raw!r}")
    return value


# -- the penalty table of a tokenizer, built once per process --------------------------------------------
_tables: dict[int, tuple[Any, PenaltyTable]] = {}
_tables_lock = threading.Lock()


def table_for(tokenizer: Any) -> PenaltyTable:
    """The penalty table of `tokenizer`, memoised: building it decodes the whole vocabulary (seconds for
    128k tokens), which happens once, when the first chooser is built (TGI's warmup)."""
    with _tables_lock:
        hit = _tables.get(id(tokenizer))
        if hit is not None and hit[0] is tokenizer:
            return hit[1]
        from reviewstack.penalty.surfaces import token_surfaces

        table = PenaltyTable(token_surfaces(tokenizer))
        _tables[id(tokenizer)] = (tokenizer, table)  # the tokenizer is kept so its id is not reused
        return table


def _copy_tracker(tracker: RowTracker) -> RowTracker:
    copy = RowTracker(tracker.table)
    copy.line, copy.armed, copy.body = tracker.line, tracker.armed, tracker.body
    return copy


def _check_penalty(penalty: float) -> float:
    penalty = float(penalty)
    if not math.isfinite(penalty) or penalty < 0:
        raise ValueError(f"the refusal penalty must be a finite number >= 0, got {penalty}")
    return penalty


# -- the batched warper ----------------------------------------------------------------------------------
class HeterogeneousRefusalWarper:
    """The refusal penalty for a TGI batch, in the shape of TGI's `Heterogeneous*` warpers.

    One `RowTracker` per batch row. `__call__(input_ids, scores)` lowers by λ, in place, the logits of
    the tokens each row's tracker names (`scores` is `[B, vocab]`; `input_ids`, `[B, max_len]` right-padded
    with 0, is only checked for its row count: the state comes from `advance`, not from re-reading ids);
    `advance(row, token)` feeds one accepted token; `filter(indices)` keeps and reorders rows;
    `concatenate(warpers)` joins batches in order. λ = 0 leaves the scores untouched.
    """

    def __init__(self, table: PenaltyTable, penalty: float, trackers: Sequence[RowTracker]) -> None:
        self.table = table
        self.penalty = _check_penalty(penalty)
        self.trackers = list(trackers)
        self._drafts: list[list[int]] | None = None  # speculated ids of the current step, per row
        self._position = 0  # draft position of the next call within the current step
        self._draft_trackers: list[RowTracker] | None = None

    @classmethod
    def fresh(cls, table: PenaltyTable, penalty: float, rows: int) -> HeterogeneousRefusalWarper:
        return cls(table, penalty, [RowTracker(table) for _ in range(rows)])

    @classmethod
    def concatenate(
        cls,
        parts: Sequence[HeterogeneousRefusalWarper | None],
        sizes: Sequence[int],
        table: PenaltyTable,
        penalty: float,
    ) -> HeterogeneousRefusalWarper:
        """The warper of batches joined in order: each part's rows (copied), or `size` fresh rows for a
        batch without a warper."""
        trackers: list[RowTracker] = []
        for part, size in zip(parts, sizes, strict=True):
            if part is None:
                trackers += [RowTracker(table) for _ in range(size)]
                continue
            if len(part) != size:
                raise RuntimeError(f"refusal penalty: a batch of {size} rows has {len(part)} row states")
            if part.table is not table:
                raise RuntimeError("refusal penalty: cannot join batches built with different tokenizers")
            trackers += [_copy_tracker(tracker) for tracker in part.trackers]
        return cls(table, penalty, trackers)

    def __len__(self) -> int:
        return len(self.trackers)

    def advance(self, row: int, token_id: int) -> None:
        self.trackers[row].advance(int(token_id))

    def begin_step(self, speculated_ids: Any = None) -> None:
        """Called before each chooser call: `speculated_ids` (`[B, S-1]` or None) are the drafted ids the
        chooser will score positions 1…S-1 for, one warper call per position."""
        self._drafts = None if speculated_ids is None else speculated_ids.tolist()
        self._position = 0
        self._draft_trackers = None

    def _trackers_now(self) -> list[RowTracker]:
        if self._drafts is None:
            return self.trackers
        position = self._position
        self._position += 1
        if position == 0:
            return self.trackers
        if self._draft_trackers is None:
            self._draft_trackers = [_copy_tracker(tracker) for tracker in self.trackers]
        for tracker, drafts in zip(self._draft_trackers, self._drafts, strict=True):
            if position - 1 >= len(drafts):
                raise RuntimeError("refusal penalty: more draft positions scored than tokens drafted")
            tracker.advance(int(drafts[position - 1]))
        return self._draft_trackers

    def penalised(self) -> list[tuple[int, ...]]:
        """Per row, the ids the next call (without drafts) lowers."""
        return [tracker.penalised() for tracker in self.trackers]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        rows = len(self.trackers)
        if scores.shape[0] != rows or (input_ids is not None and input_ids.shape[0] != rows):
            raise RuntimeError(
                f"refusal penalty: {rows} row states for scores of shape {tuple(scores.shape)}; "
                "a batch operation did not go through the patched chooser"
            )
        trackers = self._trackers_now()
        if self.penalty == 0:
            return scores
        from reviewstack.penalty.torch_ops import lower_logits

        penalised_rows, ids = [], []
        for row, tracker in enumerate(trackers):
            penalised = tracker.penalised()
            if penalised:
                penalised_rows.append(row)
                ids.append(penalised)
        if penalised_rows:
            lower_logits(scores, penalised_rows, ids, [self.penalty] * len(penalised_rows))
        return scores

    def adopt(self, other: HeterogeneousRefusalWarper) -> None:
        """Take `other`'s rows in place of this warper's (same length)."""
        if len(other) != len(self):
            raise RuntimeError(f"refusal penalty: {len(other)} row states for a batch of {len(self)}")
        self.trackers = list(other.trackers)
        self._drafts, self._draft_trackers = None, None

    def filter(self, indices: Sequence[int]) -> HeterogeneousRefusalWarper:
        """Keep rows `indices`, in that order. Always returns itself: state must survive rows that are
        not penalised at the moment."""
        self.trackers = [self.trackers[i] for i in indices]
        self._drafts, self._draft_trackers = None, None
        return self


# -- the per-request warper (non-flash models) -----------------------------------------------------------
class RefusalStaticWarper:
    """Stands in for one `NextTokenChooser`'s `static_warper`: subtracts λ from a copy of the scores, then
    runs the wrapped warper (or, where the chooser had none, returns what TGI computes without one:
    the scores and their log-softmax)."""

    def __init__(self, table: PenaltyTable, penalty: float, inner: Callable[[Any], Any] | None) -> None:
        self.tracker = RowTracker(table)
        self.penalty = _check_penalty(penalty)
        self.inner = inner

    def advance(self, token_id: int) -> None:
        self.tracker.advance(int(token_id))

    def __call__(self, scores: Any) -> Any:
        import torch

        penalised = self.tracker.penalised() if self.penalty else ()
        if penalised:
            from reviewstack.penalty.torch_ops import lower_logits

            # the chooser's scores are a view of the model's logits, also read for prefill logprobs
            scores = scores.clone()
            rows = range(scores.shape[0])
            lower_logits(scores, rows, [penalised] * len(rows), [self.penalty] * len(rows))
        if self.inner is None:
            return scores, torch.log_softmax(scores, -1)
        return self.inner(scores)


# -- installing onto TGI's classes -------------------------------------------------------------------------
def _parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def _require(cls: type, name: str, parameters: Sequence[str] = ()) -> Callable[..., Any]:
    function = getattr(cls, name, None)
    if not callable(function):
        raise TypeError(f"refusal penalty: {cls.__qualname__}.{name} is missing; TGI version not supported")
    found = _parameters(function)
    if list(parameters) != found[: len(parameters)]:
        raise TypeError(
            f"refusal penalty: {cls.__qualname__}.{name}{tuple(found)} does not start with "
            f"{tuple(parameters)}; TGI version not supported"
        )
    return function


def _init_with_warper(
    init: Callable[..., None],
    tables: Callable[[Any], PenaltyTable],
    install: Callable[[Any, PenaltyTable], Any],
) -> Callable[..., None]:
    """A chooser's `__init__` that also installs the refusal warper (none without a tokenizer)."""

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        tokenizer = getattr(self, "tokenizer", None)
        setattr(self, ATTRIBUTE, None if tokenizer is None else install(self, tables(tokenizer)))

    return __init__


def _patch_heterogeneous(cls: type, penalty: float, tables: Callable[[Any], PenaltyTable]) -> None:
    init = _require(cls, "__init__")
    call = _require(cls, "__call__", ("self", "input_ids", "scores", "speculate", "speculated_ids"))
    advance = _require(cls, "advance_grammar_single", ("self", "grammar_state_index", "next_id"))
    _require(cls, "filter", ("self", "indices"))

    def install(chooser: Any, table: PenaltyTable) -> HeterogeneousRefusalWarper:
        warper = HeterogeneousRefusalWarper.fresh(table, penalty, len(chooser.seeds))
        chooser.warpers.insert(0, warper)  # after penalties and grammar, before temperature / top-k / top-p
        return warper

    @functools.wraps(call)
    def __call__(
        self: Any,
        input_ids: Any,
        scores: Any,
        speculate: int,
        speculated_ids: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        warper = getattr(self, ATTRIBUTE, None)
        if warper is not None:
            warper.begin_step(speculated_ids)
        return call(self, input_ids, scores, speculate, speculated_ids, *args, **kwargs)

    @functools.wraps(advance)
    def advance_grammar_single(self: Any, grammar_state_index: int, next_id: int) -> Any:
        result = advance(self, grammar_state_index, next_id)
        warper = getattr(self, ATTRIBUTE, None)
        if warper is not None:
            warper.advance(grammar_state_index, next_id)
        return result

    cls.__init__ = _init_with_warper(init, tables, install)
    cls.__call__ = __call__
    cls.advance_grammar_single = advance_grammar_single


def _patch_single(cls: type, penalty: float, tables: Callable[[Any], PenaltyTable]) -> None:
    init = _require(cls, "__init__")
    advance = _require(cls, "advance_grammar", ("self", "next_id"))

    def install(chooser: Any, table: PenaltyTable) -> RefusalStaticWarper:
        chooser.static_warper = RefusalStaticWarper(table, penalty, chooser.static_warper)
        return chooser.static_warper

    @functools.wraps(advance)
    def advance_grammar(self: Any, next_id: int) -> Any:
        result = advance(self, next_id)
        warper = getattr(self, ATTRIBUTE, None)
        if warper is not None:
            warper.advance(next_id)
        return result

    cls.__init__ = _init_with_warper(init, tables, install)
    cls.advance_grammar = advance_grammar


def patch_choosers(
    heterogeneous: type | None,
    single: type | None,
    penalty: float,
    tables: Callable[[Any], PenaltyTable] = table_for,
) -> bool:
    """Install the refusal penalty on TGI's `HeterogeneousNextTokenChooser` and `NextTokenChooser`
    (either may be None). λ = 0 installs nothing and returns False; a class already patched is left as
    it is. Raises TypeError when a class lacks the methods / signatures this patch relies on."""
    penalty = _check_penalty(penalty)
    if penalty == 0:
        return False
    for cls, patch in ((heterogeneous, _patch_heterogeneous), (single, _patch_single)):
        if cls is not None and _PATCHED not in cls.__dict__:
            patch(cls, penalty, tables)
            setattr(cls, _PATCHED, penalty)
    return True


def patch_concatenate(batch_cls: type, chooser: str = "next_token_chooser") -> None:
    """Make `batch_cls.concatenate` (a classmethod building a fresh chooser) carry the refusal state of
    each batch's rows, in batch order, into the new chooser."""
    if _PATCHED in batch_cls.__dict__:
        return
    descriptor = batch_cls.__dict__.get("concatenate")
    if not isinstance(descriptor, classmethod):
        raise TypeError(f"refusal penalty: {batch_cls.__qualname__}.concatenate is not a classmethod")
    original = descriptor.__func__

    @functools.wraps(original)
    def concatenate(cls: type, batches: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        parts = [getattr(getattr(batch, chooser), ATTRIBUTE, None) for batch in batches]
        sizes = [len(batch) for batch in batches]
        merged = original(cls, batches, *args, **kwargs)
        target = getattr(getattr(merged, chooser), ATTRIBUTE, None)
        if target is not None:
            target.adopt(HeterogeneousRefusalWarper.concatenate(parts, sizes, target.table, target.penalty))
        return merged

    batch_cls.concatenate = classmethod(concatenate)
    setattr(batch_cls, _PATCHED, True)


def patch_tokens_module(module: ModuleType, penalty: float) -> None:
    patch_choosers(module.HeterogeneousNextTokenChooser, module.NextTokenChooser, penalty)
    sys.stderr.write(f"reviewstack: refusal penalty {penalty:g} installed on {module.__name__}\n")


def patch_flash_module(module: ModuleType) -> None:
    patch_concatenate(module.FlashCausalLMBatch)


# -- patching at import time ------------------------------------------------------------------------------
class _Then(importlib.abc.Loader):
    """A loader that runs the real one, then a callback on the fresh module."""

    def __init__(self, inner: Any, then: Callable[[ModuleType], None]) -> None:
        self._inner, self._then = inner, then

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        self._then(module)

    def __getattr__(self, name: str) -> Any:  # get_data, get_filename, … of the real loader
        return getattr(self._inner, name)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a callback on named modules right after they are first executed."""

    def __init__(self) -> None:
        self.pending: dict[str, Callable[[ModuleType], None]] = {}

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        then = self.pending.get(fullname)
        if then is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        del self.pending[fullname]
        spec.loader = _Then(spec.loader, then)
        return spec


_hook: _AfterImport | None = None
_active: float | None = None


def after_import(name: str, then: Callable[[ModuleType], None]) -> None:
    """Run `then(module)` once module `name` is imported (at once if it already is)."""
    global _hook
    module = sys.modules.get(name)
    if module is not None:
        then(module)
        return
    if _hook is None:
        _hook = _AfterImport()
        sys.meta_path.insert(0, _hook)
    _hook.pending[name] = then


def pending_hooks() -> tuple[str, ...]:
    return tuple(_hook.pending) if _hook is not None else ()


def active_penalty() -> float | None:
    """λ that `activate` arranged to install in this process, or None."""
    return _active


def activate(environ: Mapping[str, str] | None = None) -> bool:
    """Arrange the patch for this process from the environment: nothing when λ = 0; else TGI's token
    choosers and flash batch are patched as soon as they are imported. An invalid λ does not break the
    unrelated Python processes of the image: it makes importing TGI's token module fail, loudly."""
    global _active
    try:
        penalty = penalty_from_env(environ)
    except ValueError as error:
        message = str(error)

        def refuse(module: ModuleType) -> None:
            raise ValueError(message)

        after_import(TOKENS_MODULE, refuse)
        return False
    if penalty == 0:
        return False
    _active = penalty
    after_import(TOKENS_MODULE, lambda module: patch_tokens_module(module, penalty))
    after_import(FLASH_MODULE, patch_flash_module)
    return True


# -- build-time check against the installed TGI -----------------------------------------------------------
def check(penalty: float) -> list[str]:
    """Import the installed TGI with the patch active; return what does not fit (empty: all fits)."""
    problems: list[str] = []
    if not activate({ENV_VAR: repr(penalty)}):
        return [f"the patch did not activate for λ = {penalty}"]
    try:
        tokens = importlib.import_module(TOKENS_MODULE)
    except Exception as error:  # a signature mismatch surfaces here as the TypeError above
        return [f"importing {TOKENS_MODULE} failed: {error!r}"]
    for name in ("HeterogeneousNextTokenChooser", "NextTokenChooser"):
        if _PATCHED not in vars(getattr(tokens, name)):
            problems.append(f"{TOKENS_MODULE}.{name} was not patched")
    try:
        flash = importlib.import_module(FLASH_MODULE)
    except ImportError as error:  # GPU kernels may be missing on a build machine
        sys.stderr.write(f"reviewstack: note: {FLASH_MODULE} not importable here ({error}); not checked\n")
    else:
        if _PATCHED not in vars(flash.FlashCausalLMBatch):
            problems.append(f"{FLASH_MODULE}.FlashCausalLMBatch.concatenate was not patched")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reviewstack.penalty.tgi", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="check the installed TGI against the patch")
    args = parser.parse_args(argv)
    if not args.check:
        parser.print_help()
        return 0
    problems = check(penalty_from_env() or 1.0)
    for problem in problems:
        sys.stderr.write(f"reviewstack: {problem}\n")
    if not problems:
        sys.stderr.write("reviewstack: the refusal penalty patch fits the installed TGI\n")
    return 1 if problems else 0


if __name__ == "__main__":
    # run the copy the .pth file imported, not this __main__ duplicate with its own hook state
    from reviewstack.penalty.tgi import main as _main

    raise SystemExit(_main())
