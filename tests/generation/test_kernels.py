"""The Triton decode kernels against plain PyTorch, on random inputs (under the interpreter on CPU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

kernels = pytest.importorskip("reviewstack.generation.kernels")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """float32 throughout; on a GPU Triton's float32 dot products run in tf32 (~3e-4)."""
    tolerance = 2e-3 if DEVICE == "cuda" else 1e-5
    assert torch.isfinite(actual).all()
    error = (actual.double() - expected.double()).norm() / expected.double().norm()
    assert error < tolerance, f"relative error {error:.2e}"


@pytest.mark.parametrize("width", [64, 80])  # 80: the block is wider than the row
@pytest.mark.parametrize("with_delta", [True, False])
def test_add_rms_norm_updates_the_residual_and_normalises(width: int, with_delta: bool) -> None:
    x, delta = torch.randn(3, width, device=DEVICE), torch.randn(3, width, device=DEVICE)
    weight = torch.randn(width, device=DEVICE)
    residual = x + delta if with_delta else x.clone()
    expected = residual * torch.rsqrt(residual.pow(2).mean(-1, keepdim=True) + 1e-5) * weight
    out = kernels.add_rms_norm(x, delta if with_delta else None, weight, 1e-5)
    _close(x, residual)
    _close(out, expected)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def test_rope_and_store_rotates_q_and_k_and_writes_the_cache_at_each_rows_position() -> None:
    rows, heads, kv_heads, dim, slots, length = 3, 8, 2, 32, 4, 50
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * dim, device=DEVICE)
    angles = torch.rand(rows, dim // 2, device=DEVICE) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    positions = torch.tensor([7, 0, 49], device=DEVICE)
    keys = torch.randn(slots, kv_heads, length, dim, device=DEVICE)
    values = torch.randn_like(keys)
    keys_before, values_before = keys.clone(), values.clone()
    q = kernels.rope_and_store(qkv, cos, sin, positions, keys, values, heads)
    q_ref, k_ref, v_ref = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], -1)
    _close(q, _rotate(q_ref.view(rows, heads, dim), cos[:, None], sin[:, None]))
    k_ref = _rotate(k_ref.view(rows, kv_heads, dim), cos[:, None], sin[:, None])
    for row, position in enumerate(positions.tolist()):
        _close(keys[row, :, position], k_ref[row])
        _close(values[row, :, position], v_ref[row].view(kv_heads, dim))
        keys[row, :, position], values[row, :, position] = (
            keys_before[row, :, position],
            values_before[row, :, position],
        )
    assert torch.equal(keys, keys_before) and torch.equal(values, values_before)  # nothing else written


def _attention(q, keys, values, lengths):
    """Plain softmax attention of one query per row over the first lengths[b] cache positions."""
    groups = q.shape[1] // keys.shape[1]
    out = []
    for row, length in enumerate(lengths):
        k = keys[row, :, :length].repeat_interleave(groups, 0)
        v = values[row, :, :length].repeat_interleave(groups, 0)
        weights = (q[row, :, None] @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
        out.append((weights @ v)[:, 0].reshape(-1))
    return torch.stack(out)


@pytest.mark.parametrize("splits", [1, 3, 7])
@pytest.mark.parametrize(("heads", "kv_heads"), [(8, 2), (4, 4)])
def test_decode_attention_matches_softmax_attention_over_each_rows_length(splits, heads, kv_heads) -> None:
    dim, span = 32, 300  # positions 0..299; column 300 is the scratch column
    positions = torch.tensor([0, 63, 64, 200, 299], device=DEVICE)
    keys = torch.randn(len(positions), kv_heads, span + 1, dim, device=DEVICE)
    values = torch.randn_like(keys)
    q = torch.randn(len(positions), heads, dim, device=DEVICE)
    out = kernels.decode_attention(q, keys, values, positions, span, 1 / math.sqrt(dim), splits)
    _close(out, _attention(q, keys, values, [p + 1 for p in positions.tolist()]))


def test_rows_parked_on_the_scratch_column_attend_to_nothing() -> None:
    keys, values = torch.randn(2, 2, 101, 16, device=DEVICE), torch.randn(2, 2, 101, 16, device=DEVICE)
    q = torch.randn(2, 4, 16, device=DEVICE)
    positions = torch.tensor([100, 5], device=DEVICE)  # row 0 is padding: it sits on column 100
    out = kernels.decode_attention(q, keys, values, positions, 100, 1 / math.sqrt(16), 2)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    _close(out[1:], _attention(q[1:], keys[1:], values[1:], [6]))


def test_silu_and_mul() -> None:
    gate_up = torch.randn(3, 2 * 1500, device=DEVICE)  # 1500: two blocks, the second partly masked
    gate, up = gate_up.chunk(2, -1)
    _close(kernels.silu_and_mul(gate_up), F.silu(gate) * up)


def test_attention_splits_fill_the_processors_but_never_cut_below_one_block() -> None:
    assert kernels.attention_splits(1, 8, 12_288, 132) == 33
    assert kernels.attention_splits(16, 8, 12_288, 132) == 3
    assert kernels.attention_splits(1, 8, 100, 132) == 2
