"""Triton kernels for the decode step: one launch where eager PyTorch makes five to ten.

At batch 1 a decode step of an 8B model is memory-bound on the weights (~5 ms on an H100), but eager
PyTorch spends ~45 small kernels per layer around the 4 matrix products (RMSNorm alone is seven: casts,
square, mean, rsqrt, two products), ~1,500 a step. Even inside a CUDA graph each costs a few
microseconds, which is as much again as the weights. Here each stretch between two matrix products is one
kernel:

- `add_rms_norm`: the residual add and the next RMSNorm;
- `rope_and_store`: rotary embedding of q and k, and the write of k and v into the request's cache slot;
- `decode_attention`: split-K ("flash-decoding") attention over each row's own length, for grouped-query
  heads: each program reads one KV head's slice of the cache once for all the query heads sharing it,
  and the second kernel merges the splits by their log-sum-exp. Rows read only up to their own length, so
  one CUDA graph serves every context length;
- `silu_and_mul`: SwiGLU's activation and product.

RMSNorm and SwiGLU round to the model dtype where transformers' Llama modules do; rotary embedding and
attention compute in float32 and round once, so the fused step agrees with the eager one to bf16 noise.
Every kernel runs under Triton's interpreter (`TRITON_INTERPRET=1`) on CPU, which is how the tests check
them without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ATTENTION_BLOCK = 64  # cache positions per inner step of decode attention
MIN_DOT_ROWS = 16  # tl.dot needs at least 16 rows: the query heads of one KV head are padded to it


@triton.jit
def _add_rms_norm_kernel(
    x_ptr, delta_ptr, weight_ptr, out_ptr, width, eps, HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < width
    x = tl.load(x_ptr + row * width + cols, mask=mask, other=0.0)
    if HAS_DELTA:
        delta = tl.load(delta_ptr + row * width + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + delta.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(x_ptr + row * width + cols, x, mask=mask)
    x = x.to(tl.float32)
    variance = tl.sum(x * x, axis=0) / width
    normed = (x * tl.rsqrt(variance + eps)).to(out_ptr.dtype.element_ty)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    tl.store(out_ptr + row * width + cols, (normed.to(tl.float32) * weight.to(tl.float32)), mask=mask)


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """`x += delta` in place (the residual stream), then RMSNorm(x) · weight as a new tensor; x is [B, W]."""
    rows, width = x.shape
    out = torch.empty_like(x)
    _add_rms_norm_kernel[(rows,)](
        x,
        x if delta is None else delta,
        weight,
        out,
        width,
        eps,
        HAS_DELTA=delta is not None,
        BLOCK=triton.next_power_of_2(width),
    )
    return out


@triton.jit
def _rope_and_store_kernel(
    qkv_ptr,
    cos_ptr,
    sin_ptr,
    positions_ptr,
    q_ptr,
    keys_ptr,
    values_ptr,
    slot_stride,
    head_stride,
    position_stride,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    HALF: tl.constexpr,
):
    row = tl.program_id(0)
    head = tl.program_id(1)  # query heads first, then KV heads (each program also moves its v)
    d = tl.arange(0, HALF)
    qkv = qkv_ptr + row * (HEADS + 2 * KV_HEADS) * 2 * HALF
    cos_first = tl.load(cos_ptr + row * 2 * HALF + d).to(tl.float32)
    cos_second = tl.load(cos_ptr + row * 2 * HALF + HALF + d).to(tl.float32)
    sin_first = tl.load(sin_ptr + row * 2 * HALF + d).to(tl.float32)
    sin_second = tl.load(sin_ptr + row * 2 * HALF + HALF + d).to(tl.float32)
    first = tl.load(qkv + head * 2 * HALF + d).to(tl.float32)
    second = tl.load(qkv + head * 2 * HALF + HALF + d).to(tl.float32)
    rotated_first = (first * cos_first - second * sin_first).to(q_ptr.dtype.element_ty)
    rotated_second = (second * cos_second + first * sin_second).to(q_ptr.dtype.element_ty)
    if head < HEADS:
        out = q_ptr + (row * HEADS + head) * 2 * HALF
        tl.store(out + d, rotated_first)
        tl.store(out + HALF + d, rotated_second)
    else:
        kv_head = head - HEADS
        position = tl.load(positions_ptr + row)
        offset = row.to(tl.int64) * slot_stride + kv_head * head_stride + position * position_stride
        tl.store(keys_ptr + offset + d, rotated_first)
        tl.store(keys_ptr + offset + HALF + d, rotated_second)
        value = qkv + (HEADS + KV_HEADS + kv_head) * 2 * HALF
        tl.store(values_ptr + offset + d, tl.load(value + d))
        tl.store(values_ptr + offset + HALF + d, tl.load(value + HALF + d))


def rope_and_store(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    heads: int,
) -> torch.Tensor:
    """Rotate q and k of the fused projection `qkv` ([B, (H + 2·KV)·D]) by `cos`/`sin` ([B, D]); write
    k and v into cache slot b at positions[b] ([slots, KV, S, D] caches); return q as [B, H, D]."""
    rows = qkv.shape[0]
    _, kv_heads, _, head_dim = keys.shape
    q = torch.empty(rows, heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    _rope_and_store_kernel[(rows, heads + kv_heads)](
        qkv,
        cos,
        sin,
        positions,
        q,
        keys,
        values,
        keys.stride(0),
        keys.stride(1),
        keys.stride(2),
        HEADS=heads,
        KV_HEADS=kv_heads,
        HALF=head_dim // 2,
    )
    return q


@triton.jit
def _attention_split_kernel(
    q_ptr,
    keys_ptr,
    values_ptr,
    positions_ptr,
    partial_ptr,
    lse_ptr,
    slot_stride,
    head_stride,
    position_stride,
    scale,
    scratch,
    HEADS: tl.constexpr,
    GROUPS: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT_BLOCKS: tl.constexpr,
    SPLITS: tl.constexpr,
):
    row = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    position = tl.load(positions_ptr + row)
    length = tl.where(position < scratch, position + 1, 0)  # rows parked on the scratch column: none
    start = split * SPLIT_BLOCKS * BLOCK_N
    end = tl.minimum(start + SPLIT_BLOCKS * BLOCK_N, length)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, HEAD_DIM)
    heads = kv_head * GROUPS + g
    in_group = g < GROUPS
    q = tl.load(
        q_ptr + (row * HEADS + heads)[:, None] * HEAD_DIM + d[None, :], mask=in_group[:, None], other=0.0
    )
    cache = row.to(tl.int64) * slot_stride + kv_head * head_stride  # a cache may pass 2**31 elements
    best = tl.full([BLOCK_G], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    # a fixed trip count (the split's size), masked past the row's length: masked loads move no memory
    for block in range(SPLIT_BLOCKS):
        n = start + block * BLOCK_N + tl.arange(0, BLOCK_N)
        valid = n < end
        where = cache + n[:, None] * position_stride + d[None, :]
        k = tl.load(keys_ptr + where, mask=valid[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(k)) * scale
        scores = tl.where(valid[None, :], scores, float("-inf"))
        new_best = tl.maximum(best, tl.max(scores, axis=1))
        shift = tl.where(new_best == float("-inf"), 0.0, new_best)  # nothing seen yet: no -inf - -inf
        p = tl.exp(scores - shift[:, None])
        correction = tl.exp(best - shift)
        total = total * correction + tl.sum(p, axis=1)
        v = tl.load(values_ptr + where, mask=valid[:, None], other=0.0)
        acc = acc * correction[:, None] + tl.dot(p.to(v.dtype), v)
        best = new_best
    found = total > 0
    total = tl.where(found, total, 1.0)  # an empty split stores zeros with no weight
    index = (row * HEADS + heads) * SPLITS + split
    tl.store(
        partial_ptr + index[:, None] * HEAD_DIM + d[None, :], acc / total[:, None], mask=in_group[:, None]
    )
    tl.store(lse_ptr + index, tl.where(found, best + tl.log(total), float("-inf")), mask=in_group)


@triton.jit
def _attention_merge_kernel(
    partial_ptr, lse_ptr, out_ptr, SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, HEAD_DIM: tl.constexpr
):
    head = tl.program_id(0)  # row · HEADS + query head
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, HEAD_DIM)
    lse = tl.load(lse_ptr + head * SPLITS + s, mask=s < SPLITS, other=float("-inf"))
    top = tl.max(lse, axis=0)
    top = tl.where(top == float("-inf"), 0.0, top)
    weights = tl.exp(lse - top)
    parts = tl.load(
        partial_ptr + (head * SPLITS + s)[:, None] * HEAD_DIM + d[None, :],
        mask=(s < SPLITS)[:, None],
        other=0.0,
    )
    norm = tl.sum(weights, axis=0)
    out = tl.sum(parts * weights[:, None], axis=0) / tl.where(norm > 0, norm, 1.0)
    tl.store(out_ptr + head * HEAD_DIM + d, out.to(out_ptr.dtype.element_ty))


def attention_splits(rows: int, kv_heads: int, max_tokens: int, processors: int) -> int:
    """How many pieces each row's cache is cut into: enough programs for two per multiprocessor at full
    length (batch 1 on an H100: 33 pieces of ~370 positions), never pieces under one block."""
    wanted = max(1, triton.cdiv(2 * processors, rows * kv_heads))
    return min(wanted, triton.cdiv(max_tokens, ATTENTION_BLOCK))


def decode_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
    scratch: int,
    scale: float,
    splits: int,
) -> torch.Tensor:
    """Attention of one new token per row over cache positions 0..positions[b] of slot b; rows at the
    `scratch` position attend to nothing (zeros). q is [B, H, D]; returns [B, H·D]."""
    rows, heads, head_dim = q.shape
    kv_heads = keys.shape[1]
    split_blocks = triton.cdiv(triton.cdiv(scratch, splits), ATTENTION_BLOCK)
    partial = torch.empty(rows, heads, splits, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.empty(rows, heads, splits, dtype=torch.float32, device=q.device)
    groups = heads // kv_heads
    _attention_split_kernel[(rows, kv_heads, splits)](
        q,
        keys,
        values,
        positions,
        partial,
        lse,
        keys.stride(0),
        keys.stride(1),
        keys.stride(2),
        scale,
        scratch,
        HEADS=heads,
        GROUPS=groups,
        BLOCK_G=max(MIN_DOT_ROWS, triton.next_power_of_2(groups)),
        HEAD_DIM=head_dim,
        BLOCK_N=ATTENTION_BLOCK,
        SPLIT_BLOCKS=split_blocks,
        SPLITS=splits,
    )
    out = torch.empty(rows, heads * head_dim, dtype=q.dtype, device=q.device)
    _attention_merge_kernel[(rows * heads,)](
        partial, lse, out, SPLITS=splits, BLOCK_S=triton.next_power_of_2(splits), HEAD_DIM=head_dim
    )
    return out


@triton.jit
def _silu_and_mul_kernel(gate_up_ptr, out_ptr, width, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    gate = tl.load(gate_up_ptr + row * 2 * width + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * 2 * width + width + cols, mask=mask, other=0.0).to(tl.float32)
    activated = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * width + cols, activated * up, mask=mask)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) · up for the fused gate/up projection [B, 2·I]; returns [B, I]."""
    rows, double = gate_up.shape
    width = double // 2
    out = torch.empty(rows, width, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_and_mul_kernel[(rows, triton.cdiv(width, block))](gate_up, out, width, BLOCK=block)
    return out
