"""The reviewer prompt: one implementation shared by data-prep (training data), the review service
(inference) and the OpenAI-compatible baseline, so the model is served exactly the prompt it was trained
on and a baseline reads exactly the paper text the model reads.

Bump `PROMPT_VERSION` whenever the instruction or the layout changes: datasets, runs and reviews record
it, and a mismatch between training and serving is then visible in their lineage.
"""

from __future__ import annotations

from dataclasses import dataclass

from reviewstack.common.aspects import EMPTY_ASPECT, AspectSchema
from reviewstack.common.errors import InvalidArgument
from reviewstack.common.tokenizer import LoadedTokenizer

PROMPT_VERSION = "reviewer-v1"
MAX_PROMPT_LENGTH = 11_138
MAX_RESPONSE_LENGTH = 1_150
TRUNCATION_NOTE = "\n\n[The rest of the paper is truncated.]"


def system_instruction(schema: AspectSchema = AspectSchema.SEVEN) -> str:
    criteria = "\n".join(f"{i}. {a.criterion}" for i, a in enumerate(schema.aspects, start=1))
    return (
        "You are a professional machine learning conference reviewer. You will be given a paper. "
        f"Review it against the following {len(schema.aspects)} criteria:\n{criteria}\n\n"
        "Write the review in exactly this format: for each criterion, in this order, a line with its "
        'number and name, then its points, one per line, each starting with "- ". If you have nothing to '
        f'say about a criterion, write "- {EMPTY_ASPECT}" as its only point.'
    )


_USER_PREFIX = "Here is the paper:\n\n"


def user_message(paper_text: str) -> str:
    return f"{_USER_PREFIX}{paper_text}"


def paper_from_messages(messages: list[dict[str, str]]) -> str:
    """The paper text inside a prompt's messages, without our prefix or truncation note, so a trainer
    can rebuild the prompt for its own tokenizer and length (`PromptBuilder.build`)."""
    user = next((m["content"] for m in messages if m.get("role") == "user"), None)
    if user is None or not user.startswith(_USER_PREFIX):
        raise InvalidArgument(f"messages hold no user turn in the {PROMPT_VERSION} layout")
    return user.removeprefix(_USER_PREFIX).removesuffix(TRUNCATION_NOTE)


@dataclass(frozen=True)
class Prompt:
    """A prompt ready for a model, and what truncation did to the paper."""

    messages: list[dict[str, str]]
    text: str  # the chat-templated string, generation prompt included
    tokens: int
    paper_tokens: int  # tokens of the cleaned paper before truncation
    paper_tokens_kept: int

    @property
    def truncated(self) -> bool:
        return self.paper_tokens_kept < self.paper_tokens


class PromptBuilder:
    """Builds prompts that never exceed `max_prompt_length` tokens by cutting the paper's tail.

    The cut lands on a token boundary, moved back to the last line or sentence end so the paper never
    stops mid-word, and a one-line note tells the model the text continues.
    """

    def __init__(
        self,
        tokenizer: LoadedTokenizer,
        schema: AspectSchema = AspectSchema.SEVEN,
        max_prompt_length: int = MAX_PROMPT_LENGTH,
    ) -> None:
        self.tokenizer = tokenizer
        self.schema = schema
        self.max_prompt_length = max_prompt_length
        self.system = system_instruction(schema)
        overhead = self._count(self._render(""))
        self._note_tokens = tokenizer.count(TRUNCATION_NOTE)
        if overhead + self._note_tokens + 16 > max_prompt_length:
            raise InvalidArgument(
                f"max_prompt_length {max_prompt_length} leaves no room for the paper: the instruction and "
                f"chat template alone take {overhead} tokens"
            )
        self._budget = max_prompt_length - overhead

    def messages(self, paper_text: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": user_message(paper_text)},
        ]

    def _render(self, paper_text: str) -> str:
        messages = self.messages(paper_text)
        if self.tokenizer.has_chat_template:
            return self.tokenizer.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        # a tokenizer without a chat template (a base model): plain text with blank-line separators
        return f"{messages[0]['content']}\n\n{messages[1]['content']}\n\n"

    def _count(self, text: str) -> int:
        return self.tokenizer.count(text)

    def build(self, paper_text: str) -> Prompt:
        offsets = self.tokenizer.tokenizer(paper_text, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        paper_tokens = len(offsets)
        if paper_tokens <= self._budget:
            text = self._render(paper_text)
            total = self._count(text)
            if total <= self.max_prompt_length:
                return Prompt(self.messages(paper_text), text, total, paper_tokens, paper_tokens)
        budget = min(paper_tokens, self._budget) - self._note_tokens
        for _ in range(8):  # re-tokenising at the seams can add a token or two: shrink until it fits
            cut = _clean_cut(paper_text, offsets[budget][0])
            kept_text = paper_text[:cut].rstrip() + TRUNCATION_NOTE
            text = self._render(kept_text)
            total = self._count(text)
            if total <= self.max_prompt_length:
                kept = self.tokenizer.count(paper_text[:cut])
                return Prompt(self.messages(kept_text), text, total, paper_tokens, kept)
            budget -= total - self.max_prompt_length
        raise InvalidArgument(f"could not fit the paper into {self.max_prompt_length} tokens")


def _clean_cut(text: str, position: int, window: int = 400) -> int:
    """Move a cut back to the last paragraph, line or sentence end within `window` characters."""
    start = max(0, position - window)
    for separator in ("\n\n", "\n", ". "):
        found = text.rfind(separator, start, position)
        if found > 0:
            return found + (1 if separator == ". " else 0)
    return position


def review_prompt(builder: PromptBuilder, paper_text: str) -> tuple[Prompt, list[str]]:
    """The prompt to review a paper's text: cleaned as data-prep cleans its papers, cut to the builder's
    limit, and a warning that says how much was cut. Blocking (tokenizing a long paper takes seconds)."""
    from reviewstack.common.papers import clean_paper

    cleaned = clean_paper(paper_text)
    if not cleaned.text.strip():
        raise InvalidArgument("the paper has no text left after cleaning (only front matter?)")
    prompt = builder.build(cleaned.text)
    warnings = []
    if prompt.truncated:
        warnings.append(
            f"paper truncated to {prompt.paper_tokens_kept} of its {prompt.paper_tokens} tokens "
            f"(max_prompt_length {builder.max_prompt_length})"
        )
    return prompt, warnings
