"""Training examples from a published dataset: the prompt rebuilt for the base model's tokenizer and
length budget, the response as the assistant turn, loss on the response only.

The dataset stores `messages` (not only a prompt string) so the trainer can re-render the prompt in the
base model's own chat template with the same shared `PromptBuilder` the review service uses at serving
time; a CPU run with a 1k budget and a GPU run with 11,138 tokens read the same dataset.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.datasets import open_dataset_store
from reviewstack.common.errors import InvalidArgument
from reviewstack.common.prompt import Prompt, PromptBuilder, paper_from_messages
from reviewstack.common.response_fit import fit_response
from reviewstack.common.settings import StoreSettings
from reviewstack.common.tokenizer import LoadedTokenizer

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    paper_id: str
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt positions

    @property
    def response_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass(frozen=True)
class Dataset:
    """A published dataset opened for training: its manifest and its records per split."""

    uri: str
    manifest: dict
    records: dict[str, list[dict]]

    @property
    def schema(self) -> AspectSchema:
        return AspectSchema.parse(self.manifest.get("aspect_schema", "7"))


def open_dataset(uri: str, settings: StoreSettings | None = None) -> Dataset:
    """Read a dataset folder URI (<store>/datasets/<name>/<version>); NotFound unless it is published."""
    store, manifest = open_dataset_store(uri, settings)
    records = {
        split: [json.loads(line) for line in store.get_bytes(f"{split}.jsonl").decode().splitlines() if line]
        for split in ("train", "val", "test")
    }
    return Dataset(store.uri, manifest, records)


class ExampleBuilder:
    """Record → Example with the base model's tokenizer: prompt ids, then the assistant turn's ids."""

    def __init__(
        self,
        tokenizer: LoadedTokenizer,
        schema: AspectSchema,
        max_prompt_length: int,
        max_response_length: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.schema = schema
        self.prompts = PromptBuilder(tokenizer, schema, max_prompt_length)
        self.max_response_length = max_response_length

    def __call__(self, record: dict) -> Example:
        prompt = self.prompts.build(paper_from_messages(record["messages"]))
        completion = self._completion(prompt.messages, prompt.text, record["response"])
        encode = self.tokenizer.tokenizer
        prompt_ids = encode(prompt.text, add_special_tokens=False)["input_ids"]
        response_ids = encode(completion, add_special_tokens=False)["input_ids"]
        if len(response_ids) > self.max_response_length and record.get("aspects"):
            completion = self._refit(record, prompt, completion, len(response_ids))
            response_ids = encode(completion, add_special_tokens=False)["input_ids"]
        if len(response_ids) > self.max_response_length:  # keep the end-of-turn token: the model must stop
            response_ids = response_ids[: self.max_response_length - 1] + response_ids[-1:]
        return Example(
            record["paper_id"], prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids
        )

    def _refit(self, record: dict, prompt: Prompt, completion: str, completion_tokens: int) -> str:
        """The target refitted to this run's shorter budget the way data-prep fits it: the lowest-ranked
        items go first and every aspect keeps its heading, so a CPU-sized run still learns the whole
        format (all 7 criteria and the end of turn), not the first aspect or two of a cut-off review."""
        template = completion_tokens - self.tokenizer.count(record["response"])  # end-of-turn and such
        budget = self.max_response_length - max(0, template)
        aspects = {key: items for key, items in record["aspects"].items() if key in self.schema.keys}
        fitted = fit_response(aspects, self.schema, self.tokenizer, budget)
        return self._completion(prompt.messages, prompt.text, fitted.text)

    def _completion(self, messages: list[dict[str, str]], prompt_text: str, response: str) -> str:
        """The assistant turn as the chat template writes it, through its end-of-turn token.

        Only up to the first special token after the response: some templates (the packaged Llama-3
        one among them) append the next assistant header unconditionally, which must not be learnt."""
        tok = self.tokenizer.tokenizer
        if self.tokenizer.has_chat_template:
            full = tok.apply_chat_template(
                [*messages, {"role": "assistant", "content": response}], tokenize=False
            )
            body_end = full.find(response, len(prompt_text) if full.startswith(prompt_text) else 0)
            if full.startswith(prompt_text) and body_end >= 0:
                body_end += len(response)
                suffix = full[body_end:]
                ends = [(suffix.find(t), t) for t in self._special_tokens if t and t in suffix]
                if ends:
                    position, token = min(ends)
                    return full[len(prompt_text) : body_end + position + len(token)]
        return response + (tok.eos_token or "")

    @property
    def _special_tokens(self) -> list[str]:
        tok = self.tokenizer.tokenizer
        return sorted({*tok.all_special_tokens, *tok.get_added_vocab()}, key=len, reverse=True)


def build_examples(records: list[dict], builder: ExampleBuilder) -> list[Example]:
    if not records:
        raise InvalidArgument("the dataset split is empty")
    return [builder(record) for record in records]


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; padding is masked out of attention and loss."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class EpochSampler:
    """A seeded order per epoch, resumable at any position, sharded across ranks.

    `position` counts micro-batches consumed in the current epoch, so a restarted run skips exactly what
    it has already trained on instead of starting the epoch over.
    """

    def __init__(self, n: int, micro_batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.micro_batch_size, self.seed = n, micro_batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return max(1, self.n // (self.micro_batch_size * self.world_size))

    def _order(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        return order

    def __iter__(self) -> Iterator[list[int]]:
        """Yield index lists forever, advancing epoch/position as it goes."""
        while True:
            order = self._order(self.epoch)
            while self.position < self.batches_per_epoch:
                start = (self.position * self.world_size + self.rank) * self.micro_batch_size
                indices = [order[i % self.n] for i in range(start, start + self.micro_batch_size)]
                self.position += 1
                yield indices
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        if self.position >= self.batches_per_epoch:  # an epoch just ended: say so, not "epoch e, at its end"
            return {"epoch": self.epoch + 1, "position": 0, "n": self.n}
        return {"epoch": self.epoch, "position": self.position, "n": self.n}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("n") != self.n:
            raise InvalidArgument(
                f"the checkpoint was trained on {state.get('n')} examples, the dataset now has {self.n}: "
                "resume with the same dataset, or start a new run id"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
