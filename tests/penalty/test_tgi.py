"""The TGI adapter (`reviewstack.penalty.tgi`) against the reference `RefusalPenaltyLogitsProcessor`.

TGI's server package is not installable here (`pip download --no-deps text-generation-server` finds
nothing: it ships only inside the CUDA image), so TGI itself is not imported. What is tested is the
patch logic, on tensors with the shapes TGI's `HeterogeneousNextTokenChooser` hands its warpers
(`input_ids` `[B, max_len]` prompt + generated, right-padded with 0; `scores` `[B, vocab]`), with the
real Llama-3 tokenizer:

- the batched warper lowers exactly what the reference lowers, row by row and step by step, while
  tokens are accepted one at a time through `advance` (TGI's `advance_grammar_single`);
- its state survives rows leaving (`filter`), batches joining (`concatenate`), and speculative drafts;
- λ = 0 changes nothing and installs nothing; prose that never starts an aspect body is never touched;
- the install functions wire the warper into classes with the attributes and call protocol read in
  TGI's `tokens.py` / `flash_causal_lm.py` (small stand-ins defined here, which check the wiring, not TGI);
- importing the module and activating it imports neither torch nor TGI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from reviewstack.penalty import tgi
from reviewstack.penalty.core import PenaltyTable, RowTracker
from reviewstack.penalty.hf import RefusalPenaltyLogitsProcessor
from reviewstack.penalty.surfaces import token_surfaces
from reviewstack.penalty.tgi import HeterogeneousRefusalWarper

PENALTY = 2.5
PTH_FILE = Path(__file__).parents[2] / "services/penalty/docker/tgi/reviewstack-refusal-penalty.pth"


@pytest.fixture(scope="module")
def tokenizer():
    from reviewstack.common.tokenizer import load_tokenizer

    return load_tokenizer().tokenizer


@pytest.fixture(scope="module")
def table(tokenizer) -> PenaltyTable:
    return PenaltyTable(token_surfaces(tokenizer))


def encode(tokenizer, *pieces: str) -> list[int]:
    """Token ids of the pieces encoded one by one: lets a test force unusual tokenizations."""
    return [i for piece in pieces for i in tokenizer.encode(piece, add_special_tokens=False)]


@pytest.fixture(scope="module")
def sequences(tokenizer) -> dict[str, tuple[list[int], list[int]]]:
    """name → (prompt ids, ids the row will generate)."""
    plain = "1. How novel is the method?\n- <No related terms>\n2. How to evaluate the results\n- Thorough.\n"
    return {
        # a refusal as the tokenizer writes it: "-", " <", "No", " related", " terms", ">\n"
        "refusal": (encode(tokenizer, "Review this paper.\n"), encode(tokenizer, plain)),
        # a refusal written a character at a time after a markdown heading and another bullet
        "split": (
            encode(tokenizer, "Please write the review of the submission below.\n"),
            encode(tokenizer, "### 1) Clarity of the writing\n", "* ", *"<No related terms>", "\n")
            + encode(tokenizer, "2. Reproducibility\n-<No related terms>\n"),
        ),
        # aspects with real items: penalised at each body start, then left alone
        "items": (
            encode(tokenizer, "Go.\n"),
            encode(tokenizer, "1. Summary\nThe paper proposes a method.\n2. Strengths\n- Clear writing.\n"),
        ),
        # prose without a numbered heading: never inside an aspect body, never touched
        "prose": (
            encode(tokenizer, "Write.\n"),
            encode(tokenizer, "The paper is well written and proposes a simple method.\nIt <No claims.\n"),
        ),
    }


class Row:
    """One request: its prompt, the tokens it generates, and a reference processor of its own."""

    def __init__(self, name: str, prompt: list[int], generated: list[int], table: PenaltyTable) -> None:
        self.name, self.prompt, self.generated = name, prompt, generated
        self.step = 0  # tokens accepted so far
        self.reference = RefusalPenaltyLogitsProcessor(table, PENALTY)
        self.reference(torch.tensor([prompt]), torch.zeros(1, 8))  # learns the prompt length

    def ids(self) -> list[int]:
        return self.prompt + self.generated[: self.step]

    def expected(self, raw: torch.Tensor) -> torch.Tensor:
        """The reference's scores for this row's next token, given its raw scores `[vocab]`."""
        return self.reference(torch.tensor([self.ids()]), raw[None].clone())[0]

    def next_token(self) -> int:
        return self.generated[self.step]

    @property
    def done(self) -> bool:
        return self.step >= len(self.generated)


def padded_input_ids(rows: Sequence[Row]) -> torch.Tensor:
    """TGI's `all_input_ids_tensor[:, :max_current_length]`: prompt + generated, right-padded with 0."""
    longest = max(len(row.ids()) for row in rows)
    out = torch.zeros(len(rows), longest + 3, dtype=torch.long)  # TGI allocates room for more tokens
    for i, row in enumerate(rows):
        out[i, : len(row.ids())] = torch.tensor(row.ids())
    return out[:, :longest]


def decode_step(warper, rows: Sequence[Row], vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """One chooser step: score, compare with the references, accept each row's next token.
    Returns, per row, raw − warped (what the warper subtracted)."""
    raw = torch.randn(len(rows), vocab, generator=torch.Generator().manual_seed(seed))
    scores = raw.clone()
    out = warper(padded_input_ids(rows), scores)
    assert out.shape == raw.shape
    lowered = {}
    for i, row in enumerate(rows):
        assert torch.equal(out[i], row.expected(raw[i])), f"{row.name} differs at step {row.step}"
        lowered[row.name] = raw[i] - out[i]
        if not row.done:
            warper.advance(i, row.next_token())  # TGI: advance_grammar_single(i, token)
            row.step += 1
    return lowered


def make_rows(sequences, table, *names: str) -> list[Row]:
    return [Row(name, *sequences[name], table) for name in names]


def test_matches_the_reference_row_by_row(table, sequences, tokenizer) -> None:
    rows = make_rows(sequences, table, "refusal", "split", "items", "prose")
    warper = HeterogeneousRefusalWarper.fresh(table, PENALTY, len(rows))
    vocab = len(tokenizer)
    lowered_steps = {row.name: 0 for row in rows}
    next_token_lowered = {row.name: 0 for row in rows}
    for step in range(max(len(row.generated) for row in rows)):
        upcoming = {row.name: None if row.done else row.next_token() for row in rows}
        for name, delta in decode_step(warper, rows, vocab, seed=step).items():
            changed = delta != 0
            # lowered by λ (up to float rounding of raw − (raw − λ)), nothing else
            assert torch.allclose(delta[changed], torch.full_like(delta[changed], PENALTY))
            lowered_steps[name] += bool(changed.any())
            if upcoming[name] is not None and changed[upcoming[name]]:
                next_token_lowered[name] += 1
    # the refusal rows were penalised on the very tokens they went on to write
    assert next_token_lowered["refusal"] >= 4 and next_token_lowered["split"] >= 10
    assert lowered_steps["items"] > 0  # at each aspect body's start, until the body diverges
    assert lowered_steps["prose"] == 0 and next_token_lowered["prose"] == 0


def test_penalty_zero_is_the_identity(table, sequences, tokenizer) -> None:
    rows = make_rows(sequences, table, "refusal", "split")
    for row in rows:
        row.reference = RefusalPenaltyLogitsProcessor(table, 0.0)
        row.reference(torch.tensor([row.prompt]), torch.zeros(1, 8))
    warper = HeterogeneousRefusalWarper.fresh(table, 0.0, len(rows))
    for step in range(len(rows[0].generated)):
        for delta in decode_step(warper, rows, len(tokenizer), seed=step).values():
            assert not delta.any()
    assert tgi.patch_choosers(None, None, 0.0) is False


def test_state_survives_rows_leaving(table, sequences, tokenizer) -> None:
    rows = make_rows(sequences, table, "items", "split", "prose", "refusal")
    warper = HeterogeneousRefusalWarper.fresh(table, PENALTY, len(rows))
    for step in range(9):
        decode_step(warper, rows, len(tokenizer), seed=step)
    assert warper.trackers[3].armed  # "refusal" is inside its first aspect body
    keep = [3, 1]  # TGI's FlashCausalLMBatch.filter: kept rows, in their new order
    assert warper.filter(keep) is warper and len(warper) == 2
    rows = [rows[i] for i in keep]
    lowered = 0
    for step in range(9, 60):
        lowered += sum(bool(d.any()) for d in decode_step(warper, rows, len(tokenizer), seed=step).values())
    assert lowered > 0


def _first_step_inside_a_refusal(table, generated: list[int]) -> int:
    tracker = RowTracker(table)
    for step, token in enumerate(generated):
        if tracker.armed and tracker.body:
            return step
        tracker.advance(token)
    raise AssertionError("no refusal in the sequence")


def test_state_survives_concatenation(table, sequences, tokenizer) -> None:
    vocab = len(tokenizer)
    first = make_rows(sequences, table, "refusal", "prose")
    second = make_rows(sequences, table, "items", "split")
    warper_1 = HeterogeneousRefusalWarper.fresh(table, PENALTY, 2)
    warper_2 = HeterogeneousRefusalWarper.fresh(table, PENALTY, 2)
    # batch 1 stops in the middle of "- <No related terms>"; batch 2 joins later, after a few steps
    middle = _first_step_inside_a_refusal(table, first[0].generated)
    for step in range(middle):
        decode_step(warper_1, first, vocab, seed=step)
    for step in range(3):
        decode_step(warper_2, second, vocab, seed=100 + step)

    joined = HeterogeneousRefusalWarper.concatenate([warper_1, warper_2], [2, 2], table, PENALTY)
    rows = first + second
    assert len(joined) == 4
    # without the carried state the mid-refusal row would not be penalised: the test can tell
    assert joined.penalised()[0] and not HeterogeneousRefusalWarper.fresh(table, PENALTY, 4).penalised()[0]
    for step in range(40):
        decode_step(joined, rows, vocab, seed=200 + step)

    # a batch without refusal state (built before the patch, say) joins with fresh rows
    mixed = HeterogeneousRefusalWarper.concatenate([None, joined], [1, 4], table, PENALTY)
    assert len(mixed) == 5 and mixed.trackers[0].line == "" and not mixed.trackers[0].armed
    with pytest.raises(RuntimeError):
        HeterogeneousRefusalWarper.concatenate([warper_1], [3], table, PENALTY)


def test_speculative_drafts_are_scored_on_the_drafted_prefix(table, sequences, tokenizer) -> None:
    vocab = len(tokenizer)
    rows = make_rows(sequences, table, "refusal", "split")
    warper = HeterogeneousRefusalWarper.fresh(table, PENALTY, 2)
    start = _first_step_inside_a_refusal(table, rows[0].generated) - 1
    for step in range(start):
        decode_step(warper, rows, vocab, seed=step)
    # row 0 drafts its true next tokens, row 1 two unrelated ones: S = 3 positions are scored
    drafts = torch.tensor([rows[0].generated[start : start + 2], encode(tokenizer, " cat", " dog")])
    warper.begin_step(drafts)
    changed = 0
    for position in range(3):
        raw = torch.randn(2, vocab, generator=torch.Generator().manual_seed(position))
        out = warper(padded_input_ids(rows), raw.clone())  # TGI passes the same, stale input_ids
        for i, row in enumerate(rows):
            reference = RefusalPenaltyLogitsProcessor(table, PENALTY)
            reference(torch.tensor([row.prompt]), torch.zeros(1, 8))
            prefix = row.ids() + drafts[i, :position].tolist()
            assert torch.equal(out[i], reference(torch.tensor([prefix]), raw[i][None].clone())[0])
            changed += bool((out[i] != raw[i]).any())
    assert changed >= 3
    with pytest.raises(RuntimeError):
        warper(padded_input_ids(rows), torch.zeros(2, vocab))  # a 4th position was never drafted
    # TGI then accepts row 0's two drafts plus one token, row 1's own token: one advance per token
    for _ in range(3):
        warper.advance(0, rows[0].next_token())
        rows[0].step += 1
    warper.advance(1, rows[1].next_token())
    rows[1].step += 1
    for row in rows:  # each row's reference still runs one call per step
        row.reference(torch.tensor([row.ids()]), torch.zeros(1, vocab))
    warper.begin_step(None)
    for step in range(10):
        decode_step(warper, rows, vocab, seed=50 + step)


def test_a_batch_of_the_wrong_size_is_refused(table) -> None:
    warper = HeterogeneousRefusalWarper.fresh(table, PENALTY, 3)
    with pytest.raises(RuntimeError):
        warper(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 16))


@pytest.mark.parametrize(
    ("value", "expected"), [(None, 0.0), ("", 0.0), ("0", 0.0), (" 2.5 ", 2.5), ("1e1", 10.0)]
)
def test_penalty_from_env(value, expected) -> None:
    environ = {} if value is None else {tgi.ENV_VAR: value}
    assert tgi.penalty_from_env(environ) == expected


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_penalty_from_env_rejects(value) -> None:
    with pytest.raises(ValueError, match=tgi.ENV_VAR):
        tgi.penalty_from_env({tgi.ENV_VAR: value})


# -- the install functions, on classes with the attributes and call protocol the patch relies on -----------
class Temperature:
    """A parameter warper like TGI's: in place, `filter` returns None once no row needs it."""

    def __init__(self, temperature: list[float]) -> None:
        self.temperature = temperature

    def __call__(self, input_ids, scores):
        return scores.div_(torch.tensor(self.temperature).unsqueeze(1))

    def filter(self, indices):
        self.temperature = [self.temperature[i] for i in indices]
        return self if any(t != 1.0 for t in self.temperature) else None


def chooser_classes():
    """Fresh classes per test (patching changes the class). Their methods do only what the patch
    relies on, in the order TGI's do: warpers run in list order once per draft position;
    `advance_grammar_single` and `filter` return self; `concatenate` builds a new chooser."""

    class Chooser:
        def __init__(self, tokenizer, temperature: list[float]) -> None:
            self.tokenizer = tokenizer
            self.seeds = [0] * len(temperature)
            self.temperature = temperature
            self.warpers = [Temperature(temperature)]
            self.grammar_advances: list[tuple[int, int]] = []

        def __call__(self, input_ids, scores, speculate, speculated_ids=None, speculative_scores=None):
            positions = 1 if speculated_ids is None else speculated_ids.shape[1] + 1
            scores = scores.view(-1, positions, scores.shape[-1])
            for j in range(positions):
                current = scores[:, j]
                for warper in self.warpers:
                    current = warper(input_ids, current)
                scores[:, j] = current
            return scores.view(-1, scores.shape[-1])

        def advance_grammar_single(self, grammar_state_index: int, next_id: int):
            self.grammar_advances.append((grammar_state_index, next_id))
            return self

        def filter(self, indices):
            self.warpers = [w for w in (w.filter(indices) for w in self.warpers) if w is not None]
            self.seeds = [self.seeds[i] for i in indices]
            self.temperature = [self.temperature[i] for i in indices]
            return self

    class Single:
        def __init__(self, tokenizer, static_warper) -> None:
            self.tokenizer = tokenizer
            self.static_warper = static_warper

        def __call__(self, input_ids, scores):
            if self.static_warper is None:
                return scores, torch.log_softmax(scores, -1)
            return self.static_warper(scores)

        def advance_grammar(self, next_id: int):
            return self

    class Batch:
        def __init__(self, chooser: Chooser) -> None:
            self.next_token_chooser = chooser

        def __len__(self) -> int:
            return len(self.next_token_chooser.seeds)

        @classmethod
        def concatenate(cls, batches):  # like TGI's: a new chooser from the requests' parameters
            temperature = [t for b in batches for t in b.next_token_chooser.temperature]
            return cls(Chooser(batches[0].next_token_chooser.tokenizer, temperature))

    return Chooser, Single, Batch


def test_installed_warper_runs_before_temperature_and_follows_the_chooser(table, sequences, tokenizer):
    Chooser, Single, Batch = chooser_classes()
    assert tgi.patch_choosers(Chooser, Single, PENALTY, tables=lambda _: table) is True
    tgi.patch_concatenate(Batch)
    rows = make_rows(sequences, table, "refusal", "items")
    temperature = [0.5, 2.0]
    chooser = Chooser(tokenizer, temperature)
    warper = getattr(chooser, tgi.ATTRIBUTE)
    assert chooser.warpers[0] is warper and isinstance(chooser.warpers[1], Temperature)
    vocab = len(tokenizer)
    for step in range(12):
        raw = torch.randn(2, vocab, generator=torch.Generator().manual_seed(step))
        out = chooser(padded_input_ids(rows), raw.clone(), 0)
        for i, row in enumerate(rows):  # λ comes off the raw logit, then the temperature divides
            assert torch.allclose(out[i], row.expected(raw[i]) / temperature[i])
            chooser = chooser.advance_grammar_single(i, row.next_token())
            row.step += 1
    assert chooser.grammar_advances[:2] == [(0, rows[0].generated[0]), (1, rows[1].generated[0])]

    # rows leaving through the chooser's own filter, then a join through the batch's concatenate
    chooser.filter([1])
    assert chooser.warpers[0] is warper and len(warper) == 1
    newcomer = Row("split", *sequences["split"], table)
    other = Chooser(tokenizer, [1.5])
    for _ in range(4):
        for c, r in ((chooser, rows[1]), (other, newcomer)):
            c(padded_input_ids([r]), torch.zeros(1, vocab), 0)
            r.reference(torch.tensor([r.ids()]), torch.zeros(1, vocab))
            c.advance_grammar_single(0, r.next_token())
            r.step += 1
    merged = Batch.concatenate([Batch(chooser), Batch(other)])
    merged_warper = getattr(merged.next_token_chooser, tgi.ATTRIBUTE)
    assert [t.line for t in merged_warper.trackers] == [
        warper.trackers[0].line,
        getattr(other, tgi.ATTRIBUTE).trackers[0].line,
    ]
    joined = [rows[1], newcomer]
    for step in range(min(len(row.generated) - row.step for row in joined)):
        raw = torch.randn(2, vocab, generator=torch.Generator().manual_seed(300 + step))
        out = merged.next_token_chooser(padded_input_ids(joined), raw.clone(), 0)
        for i, row in enumerate(joined):
            assert torch.allclose(out[i], row.expected(raw[i]) / [2.0, 1.5][i])
            merged.next_token_chooser.advance_grammar_single(i, row.next_token())
            row.step += 1


def test_installed_chooser_hands_drafts_to_the_warper(table, tokenizer) -> None:
    Chooser, _, _ = chooser_classes()
    tgi.patch_choosers(Chooser, None, PENALTY, tables=lambda _: table)
    chooser = Chooser(tokenizer, [1.0])
    heading, refusal_start = encode(tokenizer, "1. Clarity\n"), encode(tokenizer, "-", " <")
    for token in heading:
        chooser.advance_grammar_single(0, token)
    vocab = len(tokenizer)
    # drafts "-", " <": position 0 follows the heading, 1 follows "-", 2 follows "- <"
    out = chooser(
        torch.zeros(1, 4, dtype=torch.long), torch.zeros(3, vocab), 2, torch.tensor([refusal_start])
    )
    expected = []
    for position in range(3):
        tracker = RowTracker(table)
        for token in heading + refusal_start[:position]:
            tracker.advance(token)
        expected.append(set(tracker.penalised()))
    for position in range(3):
        assert set(torch.nonzero(out[position]).flatten().tolist()) == expected[position]
    assert expected[1] != expected[2]


def test_single_chooser_lowers_a_copy_before_its_static_warper(table, sequences, tokenizer) -> None:
    _, Single, _ = chooser_classes()
    tgi.patch_choosers(None, Single, PENALTY, tables=lambda _: table)
    vocab = len(tokenizer)
    seen = []

    def static_warper(scores):  # TGI's StaticWarper: (warped scores, log-probs)
        seen.append(scores)
        return scores / 2.0, torch.log_softmax(scores / 2.0, -1)

    for inner in (None, static_warper):
        row = Row("refusal", *sequences["refusal"], table)
        chooser = Single(tokenizer, inner)
        lowered = 0
        for step in range(len(row.generated)):
            logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(step))
            before = logits.clone()
            scores, logprobs = chooser(torch.tensor([row.ids()]), logits[-1:, :])
            assert torch.equal(logits, before)  # the model's logits are not written to
            expected = row.expected(before[-1])
            if inner is None:
                assert torch.equal(scores[0], expected)
            else:
                assert torch.equal(seen[-1][0], expected) and torch.allclose(scores[0], expected / 2.0)
            assert torch.allclose(logprobs, torch.log_softmax(scores, -1))
            lowered += bool((expected != before[-1]).any())
            chooser = chooser.advance_grammar(row.next_token())
            row.step += 1
        assert lowered >= 4


def test_install_is_idempotent_and_checks_signatures(table) -> None:
    Chooser, Single, _ = chooser_classes()
    before = dict(vars(Chooser))
    assert tgi.patch_choosers(Chooser, Single, 0.0) is False
    assert dict(vars(Chooser)) == before  # λ = 0: nothing installed

    tgi.patch_choosers(Chooser, Single, PENALTY, tables=lambda _: table)
    patched = Chooser.__call__
    tgi.patch_choosers(Chooser, Single, 1.0, tables=lambda _: table)
    assert Chooser.__call__ is patched

    class Old:  # a chooser whose __call__ knows nothing of speculation
        def __init__(self) -> None: ...
        def __call__(self, input_ids, scores): ...
        def advance_grammar_single(self, grammar_state_index, next_id): ...
        def filter(self, indices): ...

    with pytest.raises(TypeError, match="speculate"):
        tgi.patch_choosers(Old, None, PENALTY)

    class NotAClassmethod:
        def concatenate(self, batches): ...

    with pytest.raises(TypeError):
        tgi.patch_concatenate(NotAClassmethod)


def test_a_chooser_without_tokenizer_is_left_alone(table) -> None:
    Chooser, _, _ = chooser_classes()
    tgi.patch_choosers(Chooser, None, PENALTY, tables=lambda _: table)
    chooser = Chooser(None, [2.0])
    assert getattr(chooser, tgi.ATTRIBUTE) is None and len(chooser.warpers) == 1
    assert chooser.advance_grammar_single(0, 5) is chooser


# -- import time ---------------------------------------------------------------------------------------------
def run_python(code: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    environ = {k: v for k, v in os.environ.items() if k != tgi.ENV_VAR}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**environ, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_activation_imports_neither_torch_nor_tgi() -> None:
    run_python(f"""
        import sys
        from reviewstack.penalty import tgi
        assert tgi.activate({{"{tgi.ENV_VAR}": "2"}}) is True and tgi.active_penalty() == 2.0
        assert tgi.pending_hooks() == ("{tgi.TOKENS_MODULE}", "{tgi.FLASH_MODULE}")
        assert "torch" not in sys.modules and "text_generation_server" not in sys.modules, sorted(sys.modules)
    """)


def test_penalty_zero_activates_nothing() -> None:
    run_python(f"""
        import sys
        from reviewstack.penalty import tgi
        finders = list(sys.meta_path)
        assert tgi.activate({{"{tgi.ENV_VAR}": "0"}}) is False and tgi.active_penalty() is None
        assert sys.meta_path == finders and tgi.pending_hooks() == ()
        assert tgi.activate({{}}) is False and sys.meta_path == finders
    """)


def test_an_invalid_penalty_fails_the_tgi_import_only() -> None:
    run_python(f"""
        from reviewstack.penalty import tgi
        assert tgi.activate({{"{tgi.ENV_VAR}": "lots"}}) is False
        assert tgi.pending_hooks() == ("{tgi.TOKENS_MODULE}",)
    """)


def test_the_import_hook_patches_a_module_when_it_is_imported(tmp_path) -> None:
    package = tmp_path / "probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("class Thing:\n    value = 1\n")
    (package / "data.txt").write_text("kept")
    run_python(
        """
        import sys
        from reviewstack.penalty import tgi
        seen = []
        tgi.after_import("probe_pkg.mod", lambda module: seen.append(module.Thing.value))
        assert "probe_pkg.mod" not in sys.modules and not seen
        import probe_pkg.mod
        assert seen == [1] and tgi.pending_hooks() == ()
        origin = probe_pkg.mod.__spec__.origin
        assert probe_pkg.mod.__loader__.get_data(origin.replace("mod.py", "data.txt")) == b"kept"
        tgi.after_import("probe_pkg.mod", lambda module: seen.append(2))  # already imported: at once
        assert seen == [1, 2]
        """,
        cwd=tmp_path,
    )


def test_the_pth_line_activates_the_patch() -> None:
    line = PTH_FILE.read_text().strip()
    assert line.startswith("import ") and "\n" not in line  # site.py executes such a line as it is
    run_python(
        f"""
        import sys
        exec({line!r})
        from reviewstack.penalty import tgi
        assert tgi.active_penalty() == 1.5 and tgi.FLASH_MODULE in tgi.pending_hooks()
        assert "torch" not in sys.modules
        """,
        env={tgi.ENV_VAR: "1.5"},
    )
    run_python(
        f"""
        exec({line!r})
        from reviewstack.penalty import tgi
        assert tgi.active_penalty() is None and tgi.pending_hooks() == ()
        """
    )
