"""The vLLM adapter (`reviewstack.penalty.vllm`) in vLLM's CPU build: a real OpenAI server end to end, and
the Model Runner V2 path in process.

vLLM runs from its own venv, `.venv-vllm` (`make vllm-env`; `make test` builds it unless FAST is set),
so these tests drive it as a subprocess: the server over HTTP, the in-process checks as a script. The
reference is transformers' greedy `generate` with `reviewstack.penalty.hf` on the same tiny model
(`refuser_model`), run here in `.venv`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import random
import signal
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reviewstack.common.prompt import PromptBuilder
from reviewstack.common.review_format import parse
from reviewstack.common.tokenizer import load_tokenizer

from ..conftest import free_port
from ..refuser import paper_text

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
PROCESSOR = "reviewstack.penalty.vllm:RefusalPenaltyLogitsProcessor"
MAX_TOKENS = 300
# 1.5 still leaves some refusals that 3 would lift: a λ applied twice (entry point and flag) shows
PENALTIES = (1.5, 5.0)
PAPERS = 3

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1500),  # the refuser model is trained first when no test has built it yet
    pytest.mark.skipif(
        not VLLM_PYTHON.exists(), reason=f"{VLLM_PYTHON.relative_to(REPO)} missing: run `make vllm-env`"
    ),
]


def _vllm_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    for name in ("REVIEWSTACK_REFUSAL_PENALTY", "REVIEWSTACK_REFUSAL_PENALTY_MAX"):
        env.pop(name, None)  # the defaults: λ 0 unless a request asks, at most 10
    env.update(
        HF_HUB_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE="1",  # GiB of KV cache: plenty for 1,024-token sequences
        VLLM_NO_USAGE_STATS="1",
        VLLM_DO_NOT_TRACK="1",
    )
    return env


@pytest.fixture(scope="module")
def vllm_server(
    refuser_model: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[str]:
    """vLLM's OpenAI server on a free loopback port, the processor named with --logits-processors (the
    editable install in .venv-vllm registers the entry point too: it must still act once).

    vLLM starts in stages, one process at a time (API server, engine core, worker), which leaves the
    second core idle for a minute: the transformers `reference` is computed then, and the in-process
    check of V2_CHECK (when selected) runs beside it."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    cmd = [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(refuser_model), "--served-model-name", "refuser",
        "--host", "127.0.0.1", "--port", str(port),
        "--logits-processors", PROCESSOR,
        "--dtype", "float32",  # as the transformers reference runs
        "--max-model-len", "1024", "--max-num-seqs", "8",
        "--enforce-eager",  # no torch.compile: minutes on a small CPU, and nothing to gain for a tiny model
        "--seed", "0",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        # a session of its own: the server starts an engine-core process, and teardown stops the group
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=_vllm_env(), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        if any(item.originalname == V2_CHECK for item in request.session.items):
            request.getfixturevalue("in_process_check")  # starts it: its test collects the outcome
        request.getfixturevalue("reference")
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the vLLM server exited with {proc.returncode}:\n{log_path.read_text()[-6000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{base}/health", timeout=2) as reply:
                if reply.status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"the vLLM server did not become healthy:\n{log_path.read_text()[-6000:]}")
            time.sleep(1)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):  # what outlived the server
            os.killpg(proc.pid, signal.SIGKILL)


V2_CHECK = "test_model_runner_v2_path_and_loaders_in_process"
V2_TEXT = (
    "1. How to evaluate the idea of the paper\n- <No related terms>\n"
    "2. Compared to previous similar works\n- The method is new.\n"
    "3. How to evaluate the experimental results in the paper\n<No related terms>\n"
)


@pytest.fixture(scope="module")
def in_process_check(
    refuser_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], tuple[int, str, str]]]:
    """The Model Runner V2 script (`_IN_PROCESS`, on V2_TEXT) in .venv-vllm, started as a process when first
    asked for; calling what this yields waits for it: (exit status, stdout, stderr). `vllm_server` asks
    for it while vLLM starts when V2_CHECK is selected, so that it runs on the core vLLM leaves idle."""
    tmp = tmp_path_factory.mktemp("v2-check")
    script, out, err = tmp / "v2_check.py", tmp / "stdout", tmp / "stderr"
    script.write_text(textwrap.dedent(_IN_PROCESS))
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [str(VLLM_PYTHON), str(script), str(refuser_model), V2_TEXT],
            stdout=stdout,
            stderr=stderr,
            env=_vllm_env(),
        )

    def result() -> tuple[int, str, str]:
        proc.wait(timeout=600)
        return proc.returncode, out.read_text(), err.read_text()

    try:
        yield result
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _complete(base: str, prompt: str, xargs: dict[str, object] | None) -> tuple[int, dict]:
    body: dict[str, object] = {
        "model": "refuser",
        "prompt": prompt,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "add_special_tokens": False,  # the chat template already starts with <|begin_of_text|>
        "return_token_ids": True,
    }
    if xargs is not None:
        body["vllm_xargs"] = xargs
    request = urllib.request.Request(
        f"{base}/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _generated(base: str, prompt: str, penalty: float | None) -> list[int]:
    status, reply = _complete(base, prompt, None if penalty is None else {"refusal_penalty": penalty})
    assert status == 200, reply
    return list(reply["choices"][0]["token_ids"])


@pytest.fixture(scope="module")
def prompts(refuser_model: Path) -> list[str]:
    builder = PromptBuilder(load_tokenizer(refuser_model), max_prompt_length=512)
    rng = random.Random(7)
    return [builder.build(paper_text(rng)).text for _ in range(PAPERS)]


@pytest.fixture(scope="module")
def reference(refuser_model: Path, prompts: list[str]) -> dict[float, list[list[int]]]:
    """transformers' greedy output at λ 0 and each of PENALTIES, per prompt (the oracle)."""
    import torch
    from transformers import AutoModelForCausalLM, LogitsProcessorList

    from reviewstack.penalty.hf import RefusalPenaltyLogitsProcessor

    tokenizer = load_tokenizer(refuser_model).tokenizer
    model = AutoModelForCausalLM.from_pretrained(refuser_model, dtype=torch.float32).eval()
    table = RefusalPenaltyLogitsProcessor.from_tokenizer(tokenizer, 0.0).table
    outputs: dict[float, list[list[int]]] = {}
    for penalty in (0.0, *PENALTIES):
        outputs[penalty] = []
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(
                    **ids,
                    do_sample=False,
                    max_new_tokens=MAX_TOKENS,
                    logits_processor=LogitsProcessorList([RefusalPenaltyLogitsProcessor(table, penalty)]),
                )
            outputs[penalty].append(out[0, ids["input_ids"].shape[1] :].tolist())
    return outputs


def _empty_aspects(tokenizer, ids: list[int]) -> int:
    return len(parse(tokenizer.decode(ids, skip_special_tokens=True), strict=False).empty_aspects)


def test_greedy_output_equals_transformers_and_the_penalty_lowers_refusals(
    vllm_server: str, prompts: list[str], reference: dict[float, list[list[int]]], refuser_model: Path
) -> None:
    tokenizer = load_tokenizer(refuser_model).tokenizer
    served: dict[float, list[list[int]]] = {penalty: [] for penalty in (0.0, *PENALTIES)}
    for i, prompt in enumerate(prompts):
        # without vllm_xargs the deployment default applies (0); an explicit 0 is the same
        assert _generated(vllm_server, prompt, None) == reference[0.0][i], f"paper {i}, no λ"
        for penalty in (0.0, *PENALTIES):
            served[penalty].append(_generated(vllm_server, prompt, penalty))
            assert served[penalty][i] == reference[penalty][i], f"paper {i}, λ {penalty}"
    empty = {penalty: sum(_empty_aspects(tokenizer, ids) for ids in runs) for penalty, runs in served.items()}
    assert empty[0.0] > 0, "the refuser model should refuse at λ 0"
    assert all(empty[penalty] < empty[0.0] for penalty in PENALTIES), empty


def test_a_mixed_concurrent_batch_tracks_each_request(
    vllm_server: str, prompts: list[str], reference: dict[float, list[list[int]]]
) -> None:
    """Requests with different λ and lengths in one batch: vLLM adds, removes and moves rows as they
    finish, and each request must still get its own penalty on its own tokens."""
    jobs = [(i, penalty) for penalty in (0.0, *PENALTIES) for i in range(len(prompts))] * 2
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: _generated(vllm_server, prompts[job[0]], job[1]), jobs))
    for (i, penalty), ids in zip(jobs, results, strict=True):
        assert ids == reference[penalty][i], f"paper {i}, λ {penalty}"


@pytest.mark.parametrize("value", [10.5, -1, "lots", [2]])
def test_a_penalty_out_of_bounds_is_refused(vllm_server: str, prompts: list[str], value: object) -> None:
    status, reply = _complete(vllm_server, prompts[0], {"refusal_penalty": value})
    assert status == 400, reply
    assert "refusal_penalty" in json.dumps(reply)


_IN_PROCESS = """
import json, sys, types
import torch
from vllm.v1.sample.logits_processor import _load_custom_logitsprocs, validate_logits_processors_parameters
from vllm.v1.worker.gpu.sample.logits_processor import (
    LogitsContext, LogitsProcRequestState, build_custom_logits_processors_params_validator)
from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs
from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import SamplingParams
from reviewstack.penalty.core import RowTracker
from reviewstack.penalty.vllm import PROCESSOR_NAME, RefusalPenaltyLogitsProcessor as P

model, text = sys.argv[1], sys.argv[2]
# both loaders accept the class, from the entry point and by name
assert _load_custom_logitsprocs(None) == [P], _load_custom_logitsprocs(None)
assert _load_v2_logitsprocs(None) == [P] and _load_v2_logitsprocs([PROCESSOR_NAME]) == [P, P]
for validate in (build_custom_logits_processors_params_validator([PROCESSOR_NAME]),
                 lambda p: validate_logits_processors_parameters([PROCESSOR_NAME], p)):
    validate(SamplingParams(extra_args={"refusal_penalty": 3}))
    try:
        validate(SamplingParams(extra_args={"refusal_penalty": 11}))
        raise AssertionError("11 accepted")
    except VLLMValidationError as e:
        assert "refusal_penalty" in str(e), e

# Model Runner V2 on vLLM's own dataclasses, CPU tensors in place of its device buffers
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(model)
prompt = tok.encode("Review this paper.", add_special_tokens=False)
out = tok.encode(text, add_special_tokens=False)
slots, width, vocab = 6, 64, len(tok)
all_ids, total = torch.zeros(slots, width, dtype=torch.long), torch.zeros(slots, dtype=torch.long)
prompt_len = torch.zeros(slots, dtype=torch.int32)
buf = lambda t: types.SimpleNamespace(gpu=t, np=t.numpy(), cpu=t)
state = LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=slots, vocab_size=vocab,
    all_token_ids=buf(all_ids), prompt_len=buf(prompt_len), prefill_len=buf(prompt_len), total_len=buf(total))
config = types.SimpleNamespace(model_config=types.SimpleNamespace(
    tokenizer=model, tokenizer_revision=None, trust_remote_code=False, logits_processors=None))
proc = P(config, state)
for slot, extra in ((4, {"refusal_penalty": 5}), (1, {})):  # slot 1: the default, 0
    assert proc.add_request(slot, SamplingParams(extra_args=extra)) == (slot == 4)
    seq = prompt + out
    all_ids[slot, :len(seq)] = torch.tensor(seq)
    prompt_len[slot], total[slot] = len(prompt), len(seq)

def lowered(logits):
    return [sorted(torch.nonzero(row < 0).flatten().tolist()) for row in logits]

def expected(tokens):
    tracker = RowTracker(proc.table)
    for t in tokens:
        tracker.advance(t)
    return sorted(i for i in tracker.penalised() if i < vocab)

checked = 0
for step in [0, *range(5, len(out) + 1)]:  # the tracker catches up on five tokens, then one at a time
    n = len(prompt) + step
    total[4] = total[1] = n
    idx = torch.tensor([1, 4], dtype=torch.int32)
    ctx = LogitsContext(expanded_idx_mapping=idx, idx_mapping=idx, idx_mapping_np=idx.numpy(),
        expanded_local_pos=torch.zeros(2, dtype=torch.int32), input_ids=torch.zeros(2, dtype=torch.long),
        pos=torch.zeros(2, dtype=torch.int32), seq_lens_upper_bound_np=idx.numpy())
    got = lowered(proc.apply(torch.zeros(2, vocab), ctx))
    assert got == [[], expected(out[:step])], (step, got)
    checked += bool(got[1])
    if step + 3 <= len(out):  # speculative rows: slot 4 with drafts out[step:step+2], then slot 1
        mapping = torch.tensor([4, 4, 4, 1], dtype=torch.int32)
        ctx = LogitsContext(expanded_idx_mapping=mapping, idx_mapping=torch.tensor([4, 1]),
            idx_mapping_np=torch.tensor([4, 1]).numpy(),
            expanded_local_pos=torch.tensor([0, 1, 2, 0], dtype=torch.int32),
            input_ids=torch.tensor([out[step - 1] if step else prompt[-1], out[step], out[step + 1], 0]),
            pos=torch.zeros(4, dtype=torch.int32), seq_lens_upper_bound_np=torch.zeros(2).numpy())
        got = lowered(proc.apply(torch.zeros(4, vocab), ctx))
        want = [expected(out[:step + k]) for k in range(3)] + [[]]
        assert got == want, (step, got, want)
print(json.dumps({"steps": len(out) + 1, "penalised_steps": checked}))
"""


def test_model_runner_v2_path_and_loaders_in_process(
    in_process_check: Callable[[], tuple[int, str, str]],
) -> None:
    """What the CPU build cannot run in an engine (Model Runner V2 needs Triton's CPU backend): the
    V2 `add_request`/`apply` on vLLM's own request-state and context types, plus both loaders and both
    params validators on the installed entry point."""
    returncode, stdout, stderr = in_process_check()
    assert returncode == 0, stdout[-3000:] + stderr[-6000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["penalised_steps"] >= 4, summary
