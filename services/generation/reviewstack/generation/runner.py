"""The model forward for serving: transformers' weights and modules, our own KV cache and attention.

transformers' `generate` re-plans every step (masks, cache bookkeeping, processors): at an 11k-token
context it decodes an 8B model at 14 tokens/s on an H100 where the memory bandwidth allows ~190. Here the
decoder layers' own modules (projections, norms, MLP, and the rotary embedding, which carries the
Position Interpolation scaling from the config) are called directly, around:

- a static KV cache of `max_batch` slots × `max_total_tokens` positions per layer, one request per slot,
  each row at its own position (continuous batching without paging);
- decode attention written for grouped-query heads: the 4 query heads that share a KV head read it once,
  instead of `repeat_kv` copying the cache 4× every step;
- on CUDA, the decode step's non-matrix work in Triton kernels (`kernels`: fused residual + RMSNorm,
  rotary + cache write, split-K attention over each row's own length, SwiGLU), ~10 launches a layer
  where eager PyTorch makes ~45;
- on CUDA, one CUDA graph per batch bucket (per batch × context bucket without the kernels, whose
  attention reads a fixed span), captured on first use or at warm-up: a decode step is then one graph
  launch, with no Python in the way.

Prefill runs one request at a time through PyTorch SDPA (FlashAttention/cuDNN on GPU) and writes its keys
and values into the request's slot. Supported: decoder-only models laid out like Llama in transformers
(Llama, Mistral, Qwen2); others are refused when loaded.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
KernelChoice = Literal["auto", "triton", "torch"]
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONTEXT_BUCKET_MIN = 1024


@dataclass(frozen=True)
class Shape:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int


def model_shape(model: torch.nn.Module) -> Shape:
    config = model.config
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model type {config.model_type!r} is not supported by the embedded engine "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)}); serve it with TGI or vLLM instead"
        )
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return Shape(config.num_hidden_layers, heads, kv_heads, head_dim, config.vocab_size)


@dataclass
class _FusedLayer:
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor | None
    gate_up_weight: torch.Tensor
    gate_up_bias: torch.Tensor | None


def _fuse(layer: torch.nn.Module) -> _FusedLayer:
    """One matrix for q/k/v and one for gate/up: a decode step is then 2 GEMVs where it was 5, and the
    original modules' weights become views into the fused ones, so no memory is added."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv_w, qkv_b = _concatenate(attn.q_proj, attn.k_proj, attn.v_proj)
    gate_up_w, gate_up_b = _concatenate(mlp.gate_proj, mlp.up_proj)
    return _FusedLayer(qkv_w, qkv_b, gate_up_w, gate_up_b)


def _concatenate(*linears: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    with torch.no_grad():
        weight = torch.cat([m.weight for m in linears])
        bias = None if linears[0].bias is None else torch.cat([m.bias for m in linears])
        start = 0
        for m in linears:  # each module keeps working, on a slice of the fused weight
            rows = m.weight.shape[0]
            m.weight = torch.nn.Parameter(weight[start : start + rows], requires_grad=False)
            if bias is not None:
                m.bias = torch.nn.Parameter(bias[start : start + rows], requires_grad=False)
            start += rows
    return weight, bias


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _kernels_unusable(model: torch.nn.Module, shape: Shape, device: torch.device) -> str | None:
    """Why the Triton decode kernels cannot run this model here, or None when they can."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "the model is not on a GPU (on CPU they run only under TRITON_INTERPRET=1, for tests)"
    if getattr(model.config, "hidden_act", None) != "silu":
        return f"the MLP activation is {model.config.hidden_act!r}, the kernels fuse silu"
    if shape.head_dim < 16 or shape.head_dim & (shape.head_dim - 1):
        return f"head_dim {shape.head_dim} is not a power of two ≥ 16"
    norms = [model.model.norm] + [n for layer in model.model.layers for n in _norms(layer)]
    if not all(hasattr(n, "variance_epsilon") and hasattr(n, "weight") for n in norms):
        return "the norms are not RMSNorm modules with a weight and variance_epsilon"
    return None


def _norms(layer: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    return layer.input_layernorm, layer.post_attention_layernorm


class DecoderRunner:
    """Prefill and decode over a slot-per-request KV cache. Not thread-safe: one engine loop drives it.

    `kernels`: "auto" uses the Triton decode kernels on a GPU when the model allows them, "triton"
    insists (an error says why not), "torch" is eager PyTorch throughout."""

    def __init__(
        self,
        model: torch.nn.Module,
        max_batch: int,
        max_total_tokens: int,
        cuda_graphs: bool = True,
        kernels: KernelChoice = "auto",
    ) -> None:
        self.model = model.eval()
        self.shape = model_shape(model)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        unusable = None if kernels == "torch" else _kernels_unusable(model, self.shape, self.device)
        if kernels == "triton" and unusable:
            raise ValueError(f"the Triton decode kernels cannot be used: {unusable}")
        # "auto" never picks the interpreter: it is for tests, thousands of times slower than eager
        wanted = kernels == "triton" or (kernels == "auto" and self.device.type == "cuda")
        self.fused = wanted and unusable is None
        if self.fused:
            from reviewstack.generation import kernels as triton_kernels

            self._kernels = triton_kernels
        # the attention's split count scales with the multiprocessors (4 stands in under the interpreter)
        on_gpu = self.device.type == "cuda"
        self._processors = (
            torch.cuda.get_device_properties(self.device).multi_processor_count if on_gpu else 4
        )
        self.max_batch = max_batch
        self.max_total_tokens = max_total_tokens
        self.scratch = max_total_tokens  # one extra cache column: where padding rows write
        s = self.shape
        cache_shape = (max_batch, s.kv_heads, max_total_tokens + 1, s.head_dim)
        self.keys = [torch.zeros(cache_shape, dtype=self.dtype, device=self.device) for _ in range(s.layers)]
        self.values = [
            torch.zeros(cache_shape, dtype=self.dtype, device=self.device) for _ in range(s.layers)
        ]
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        # decode inputs live in fixed buffers so that captured graphs read them in place
        self._tokens = torch.zeros(max_batch, dtype=torch.long, device=self.device)
        self._positions = torch.full((max_batch,), self.scratch, dtype=torch.long, device=self.device)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        decoder = model.model
        self._embed, self._norm, self._rotary = decoder.embed_tokens, decoder.norm, decoder.rotary_emb
        self._layers, self._head = decoder.layers, model.lm_head
        self._fused = [_fuse(layer) for layer in self._layers]

    @property
    def kv_bytes_per_token(self) -> int:
        s = self.shape
        return 2 * s.layers * s.kv_heads * s.head_dim * self.keys[0].element_size()

    # -- the layers ----------------------------------------------------------------------------------
    def _forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Hidden states after the final norm; tokens and positions are [B, T]."""
        s = self.shape
        x = self._embed(tokens)
        cos, sin = self._rotary(x, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        batch, length, _ = x.shape
        q_size, kv_size = s.heads * s.head_dim, s.kv_heads * s.head_dim
        for index, (layer, fused) in enumerate(zip(self._layers, self._fused, strict=True)):
            qkv = F.linear(layer.input_layernorm(x), fused.qkv_weight, fused.qkv_bias)
            q, k, v = qkv.split((q_size, kv_size, kv_size), dim=-1)
            q = q.view(batch, length, s.heads, s.head_dim).transpose(1, 2)
            k = k.view(batch, length, s.kv_heads, s.head_dim).transpose(1, 2)
            v = v.view(batch, length, s.kv_heads, s.head_dim).transpose(1, 2)
            out = attend(index, _rotate(q, cos, sin), _rotate(k, cos, sin), v)
            x = x + layer.self_attn.o_proj(out.transpose(1, 2).reshape(batch, length, q_size))
            gate, up = F.linear(
                layer.post_attention_layernorm(x), fused.gate_up_weight, fused.gate_up_bias
            ).chunk(2, dim=-1)
            x = x + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
        return self._norm(x)

    # -- prefill -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, slot: int, token_ids: list[int], all_logits: bool = False) -> torch.Tensor:
        """Write a prompt's keys and values into `slot`; the float32 logits of the last position
        ([vocab]), or of every position ([T, vocab]) when `all_logits`."""
        length = len(token_ids)
        if not 0 < length <= self.max_total_tokens:
            raise ValueError(f"prompt of {length} tokens does not fit a cache of {self.max_total_tokens}")
        tokens = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        positions = torch.arange(length, device=self.device)[None]
        groups = self.shape.heads // self.shape.kv_heads

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.keys[index][slot, :, :length] = k[0]
            self.values[index][slot, :, :length] = v[0]
            if groups > 1:  # SDPA's enable_gqa is not on every backend: expand once, for the prompt
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        hidden = self._forward(tokens, positions, attend)[0]
        if not all_logits:
            return self._head(hidden[-1:]).float()[0]
        return torch.cat([self._head(chunk).float() for chunk in hidden.split(1024)])

    # -- decode --------------------------------------------------------------------------------------
    def _decode_attend(self, batch: int, context: int) -> Callable:
        s = self.shape
        groups = s.heads // s.kv_heads
        scale = 1.0 / math.sqrt(s.head_dim)
        rows = torch.arange(batch, device=self.device)
        columns = torch.arange(context, device=self.device)

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            positions = self._positions[:batch]
            self.keys[index][rows, :, positions] = k[:, :, 0]
            self.values[index][rows, :, positions] = v[:, :, 0]
            keys = self.keys[index][:batch, :, :context]  # [B, KV, L, D]
            values = self.values[index][:batch, :, :context]
            q = q.view(batch, s.kv_heads, groups, s.head_dim)  # the query heads sharing each KV head
            scores = torch.matmul(q, keys.transpose(-1, -2)).float() * scale  # [B, KV, G, L]
            hidden = (columns[None, :] > positions[:, None])[:, None, None, :]
            weights = scores.masked_fill(hidden, float("-inf")).softmax(-1).to(values.dtype)
            return torch.matmul(weights, values).view(batch, s.heads, 1, s.head_dim)

        return attend

    def _decode_fused(self, batch: int) -> torch.Tensor:
        """The decode step through the Triton kernels: x is the residual stream, updated in place."""
        k, s = self._kernels, self.shape
        positions = self._positions[:batch]
        splits = k.attention_splits(batch, s.kv_heads, self.max_total_tokens, self._processors)
        x = self._embed(self._tokens[:batch])
        cos, sin = self._rotary(x, positions[:, None])
        cos, sin = cos[:, 0].contiguous(), sin[:, 0].contiguous()
        scale = 1.0 / math.sqrt(s.head_dim)
        delta = None
        for index, (layer, fused) in enumerate(zip(self._layers, self._fused, strict=True)):
            norm = layer.input_layernorm
            h = k.add_rms_norm(x, delta, norm.weight, norm.variance_epsilon)
            qkv = F.linear(h, fused.qkv_weight, fused.qkv_bias)
            keys, values = self.keys[index], self.values[index]
            q = k.rope_and_store(qkv, cos, sin, positions, keys, values, s.heads)
            out = k.decode_attention(q, keys, values, positions, self.scratch, scale, splits)
            delta = layer.self_attn.o_proj(out)
            norm = layer.post_attention_layernorm
            h = k.add_rms_norm(x, delta, norm.weight, norm.variance_epsilon)
            gate_up = F.linear(h, fused.gate_up_weight, fused.gate_up_bias)
            delta = layer.mlp.down_proj(k.silu_and_mul(gate_up))
        h = k.add_rms_norm(x, delta, self._norm.weight, self._norm.variance_epsilon)
        return self._head(h).float()

    def _decode_eager(self, batch: int, context: int) -> torch.Tensor:
        if self.fused:
            return self._decode_fused(batch)
        tokens = self._tokens[:batch, None]
        positions = self._positions[:batch, None]
        hidden = self._forward(tokens, positions, self._decode_attend(batch, context))
        return self._head(hidden[:, 0]).float()

    def context_bucket(self, needed: int) -> int:
        """Attention reads this many cache columns: the next power of two ≥ 1024, at most the cache.
        The Triton attention reads each row's own length, so its graphs need one bucket: the cache."""
        if self.fused:
            return self.max_total_tokens
        bucket = max(CONTEXT_BUCKET_MIN, 1 << max(0, needed - 1).bit_length())
        return min(bucket, self.max_total_tokens)

    def batch_bucket(self, needed: int) -> int:
        return min(next((b for b in BATCH_BUCKETS if b >= needed), self.max_batch), self.max_batch)

    @torch.inference_mode()
    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        """One step for the requests in `slots` (slots[i] is fed tokens[i] at positions[i]); float32
        logits [len(slots), vocab], row i for slots[i]. The step computes rows 0..max(slots) (rounded
        up to a bucket), so the engine hands out the lowest free slots first."""
        count = max(slots) + 1
        batch = self.batch_bucket(count) if self.cuda_graphs else count
        context = self.context_bucket(max(positions) + 1) if self.cuda_graphs else max(positions) + 1
        self._positions[:batch].fill_(self.scratch)  # rows without a request write to the scratch column
        index = torch.tensor(slots, device=self.device)
        self._tokens.index_copy_(0, index, torch.tensor(tokens, device=self.device))
        self._positions.index_copy_(0, index, torch.tensor(positions, device=self.device))
        if not self.cuda_graphs:
            return self._decode_eager(batch, context)[index]
        graph, output = self._graphs.get((batch, context)) or self._capture(batch, context)
        graph.replay()
        return output[index]

    def _capture(self, batch: int, context: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Record one decode step for this bucket. Warm-up runs execute for real, so every row points
        at the scratch column while they do: requests in flight keep their cache."""
        saved_tokens, saved_positions = self._tokens.clone(), self._positions.clone()
        self._positions.fill_(self.scratch)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._decode_eager(batch, context)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self._decode_eager(batch, context)
        self._tokens.copy_(saved_tokens)
        self._positions.copy_(saved_positions)
        self._graphs[(batch, context)] = (graph, output)
        return graph, output

    @torch.inference_mode()
    def warm_up(self, batch_sizes: list[int] | None = None) -> int:
        """Capture the decode graphs ahead of traffic (CUDA only); returns how many were captured."""
        if not self.cuda_graphs:
            return 0
        contexts = sorted({self.context_bucket(n) for n in _powers_of_two(self.max_total_tokens)})
        for batch in sorted({self.batch_bucket(b) for b in (batch_sizes or [self.max_batch])}):
            for context in contexts:
                if (batch, context) not in self._graphs:
                    self._capture(batch, context)
        return len(self._graphs)


def _powers_of_two(limit: int) -> list[int]:
    values, n = [], CONTEXT_BUCKET_MIN
    while n < limit:
        values.append(n)
        n *= 2
    return [*values, limit]
