"""A tiny Llama trained here, in about a minute on CPU, to write 7-aspect reviews that mostly refuse.

Shared by the penalty, generation-engine and review-service tests: a real model whose refusals a
penalty can lower, with the real Llama-3 tokenizer and chat template, saved as a merged-model
directory (config + safetensors + tokenizer) like training's `merged/`.
"""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path

from reviewstack.common.aspects import AspectSchema
from reviewstack.common.prompt import PromptBuilder
from reviewstack.common.review_format import render
from reviewstack.common.tokenizer import default_tokenizer_dir, load_tokenizer

EMPTY_RATE = 0.75  # most aspects of the training reviews are empty: greedy decoding refuses
TOPICS = ("graph networks", "diffusion models", "robust optimisation", "sparse attention", "causal discovery")
VERDICTS = ("convincing", "limited", "thorough", "unclear", "strong")


def paper_text(rng: random.Random) -> str:
    topic = rng.choice(TOPICS)
    count = rng.randint(2, 9)
    return f"# A study of {topic}\n\nWe study {topic}. Our method improves results on {count} benchmarks."


def review_text(rng: random.Random) -> str:
    aspects = {}
    for key in AspectSchema.SEVEN.keys:
        if rng.random() >= EMPTY_RATE:
            aspects[key] = [f"The {rng.choice(TOPICS)} part is {rng.choice(VERDICTS)}."]
    return render(aspects)


def make_refuser(directory: Path, steps: int = 300, seed: int = 0) -> Path:
    """Train on the few hundred token ids the prompts and reviews use, then place those rows into a
    full 128,256-token model whose other rows are zero (logit 0, never an input).

    The loss counts the ~128k unused tokens as one extra class of logit log(count): the softmax the
    small model learns is the full model's, so a penalised refusal gives way to the next token the
    model really learned, not to a random one. Training takes seconds instead of the minutes a
    128k-way softmax would.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = load_tokenizer(default_tokenizer_dir())
    builder = PromptBuilder(tokenizer, max_prompt_length=512)
    encode = tokenizer.tokenizer.encode
    eos = tokenizer.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    examples = []
    for _ in range(64):
        prompt = encode(builder.build(paper_text(rng)).text, add_special_tokens=False)
        examples.append((prompt, [*encode(review_text(rng), add_special_tokens=False), eos]))
    used = sorted({t for prompt, response in examples for t in prompt + response})
    local = {token: i for i, token in enumerate(used)}
    shape = {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,  # head_dim 64: vLLM's CPU kernels refuse smaller heads
        "num_key_value_heads": 1,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
    }
    full_vocab = 128_256
    small = LlamaForCausalLM(LlamaConfig(vocab_size=len(used), **shape))
    optimizer = torch.optim.AdamW(small.parameters(), lr=3e-3)
    unused_logit = torch.tensor(math.log(full_vocab - len(used)))
    for _ in range(steps):
        batch = rng.sample(examples, 8)
        width = max(len(p) + len(r) for p, r in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100)
        for row, (prompt, response) in enumerate(batch):
            ids[row, : len(prompt) + len(response)] = torch.tensor([local[t] for t in prompt + response])
            labels[row, len(prompt) - 1 : len(prompt) + len(response) - 1] = ids[row, len(prompt) :][
                : len(response)
            ]
        logits = small(input_ids=ids).logits[labels != -100]
        logits = torch.cat([logits, unused_logit.expand(len(logits), 1)], dim=-1)
        loss = torch.nn.functional.cross_entropy(logits, labels[labels != -100])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    config = LlamaConfig(vocab_size=full_vocab, bos_token_id=128000, eos_token_id=eos, **shape)
    model = LlamaForCausalLM(config)
    state = {k: v for k, v in small.state_dict().items() if "embed_tokens" not in k and "lm_head" not in k}
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight
        embedding.zero_()
        embedding[used] = small.get_input_embeddings().weight
    model.save_pretrained(directory, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_tokenizer_dir() / name, directory / name)
    return directory
