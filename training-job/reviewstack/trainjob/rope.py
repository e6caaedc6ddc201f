"""Position Interpolation (Chen et al. 2023, "Extending Context Window of Large Language Models via
Positional Interpolation", arXiv:2306.15595): to run a RoPE model at L' > L tokens, divide every position
by s = L'/L before the rotary embedding, so positions stay inside the range the model was trained on.

In transformers 5 this is `rope_parameters = {"rope_type": "linear", "factor": s, ...}` on the config;
the model's rotary embedding then computes cos/sin at p/s (shapes: inv_freq [head_dim/2]; positions
[batch, seq]; cos, sin [batch, seq, head_dim]). Writing it into the config means the merged model a
server loads carries the same scaling — training and serving cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from reviewstack.common.errors import InvalidArgument


def original_context(config: Any) -> int:
    """The context the base model was trained for: a linear-scaled config says max_position_embeddings
    = original × factor (we write both), so the original is recovered by dividing."""
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type") == "linear":
        return round(config.max_position_embeddings / float(rope["factor"]))
    return int(config.max_position_embeddings)


def interpolation_factor(config: Any, target_context: int, factor: float | None = None) -> float:
    """s = target / original context, or the factor asked for; never below 1."""
    s = factor if factor is not None else target_context / original_context(config)
    if s < 1.0:
        raise InvalidArgument(
            f"Position Interpolation factor {s:g} < 1: the target context {target_context} is shorter than "
            f"the model's own {original_context(config)}; lower nothing, use factor 1"
        )
    return s


def apply_position_interpolation(config: Any, factor: float) -> None:
    """Write linear RoPE scaling into `config` in place (factor 1 leaves RoPE as it is)."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise InvalidArgument(
            f"the base model already uses {rope['rope_type']!r} RoPE scaling; linear Position Interpolation "
            "on top of it is not supported"
        )
    original = original_context(config)
    if factor == 1.0 or (rope.get("rope_type") == "linear" and float(rope["factor"]) == factor):
        return  # nothing to do, or already applied (a merged model reloaded for more training)
    rope.update({"rope_type": "linear", "factor": float(factor)})
    config.rope_parameters = rope
    config.max_position_embeddings = round(original * factor)
