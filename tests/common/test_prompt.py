"""The shared reviewer prompt: the Llama-3 chat template, and truncation that never exceeds the limit."""

from pathlib import Path

import pytest

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.errors import FailedPrecondition, InvalidArgument
from reviewstack.common.prompt import TRUNCATION_NOTE, PromptBuilder, system_instruction
from reviewstack.common.tokenizer import load_tokenizer

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "neurips2025-sample" / "papers"


@pytest.fixture(scope="module")
def llama3():
    return load_tokenizer()


def test_default_tokenizer_is_llama3_with_its_chat_template(llama3):
    assert llama3.has_chat_template
    assert llama3.tokenizer.convert_tokens_to_ids("<|eot_id|>") == 128009
    assert len(llama3.sha256) == 64


def test_short_paper_is_kept_whole_in_the_chat_template(llama3):
    prompt = PromptBuilder(llama3).build("# A tiny paper\n\nWe prove P = NP.")
    assert not prompt.truncated
    assert prompt.text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
    assert prompt.text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "We prove P = NP." in prompt.text
    assert prompt.tokens == llama3.count(prompt.text)
    assert prompt.messages[0]["content"] == system_instruction(AspectSchema.SEVEN)


@pytest.mark.parametrize("limit", [11_138, 4_096, 1_000])
def test_long_paper_is_cut_to_the_limit_at_a_clean_boundary(llama3, limit):
    paper = max(SAMPLE.glob("*.md"), key=lambda p: p.stat().st_size).read_text()
    prompt = PromptBuilder(llama3, max_prompt_length=limit).build(paper)
    assert prompt.truncated
    assert prompt.tokens <= limit
    assert prompt.tokens >= limit - 150  # the cut backs off to a line end, not much further
    assert prompt.tokens == llama3.count(prompt.text)
    kept = prompt.messages[1]["content"]
    assert kept.endswith(TRUNCATION_NOTE)
    body = kept.removesuffix(TRUNCATION_NOTE)
    assert paper.startswith(body.removeprefix("Here is the paper:\n\n"))


def test_limit_too_small_for_the_instruction_is_refused(llama3):
    with pytest.raises(InvalidArgument, match="no room for the paper"):
        PromptBuilder(llama3, max_prompt_length=100)


def test_four_aspect_instruction_lists_four_criteria():
    text = system_instruction(AspectSchema.FOUR)
    assert "following 4 criteria" in text and "4. Suggestions for improvement" in text


def test_missing_tokenizer_directory_says_what_to_do(tmp_path):
    with pytest.raises(FailedPrecondition, match="tokenizer"):
        load_tokenizer(str(tmp_path / "nowhere"))
