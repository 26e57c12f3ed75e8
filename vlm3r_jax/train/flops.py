"""Model FLOPs of one train step, the numerator of MFU.

The rule, per matmul parameter and per token it is applied to:

| parameter | FLOPs | why |
|---|---|---|
| trainable | 6N | forward 2N, gradient of the input 2N, gradient of the weight 2N |
| frozen, a trainable part runs before it | 4N | forward, and the input gradient still flows through it |
| frozen, nothing trainable before it | 2N | forward only (SigLIP and CUT3R in the released recipe) |

plus the attention score/value products (4 T_q T_kv H d_head forward per layer; half of it
when causal), times 3 where a gradient flows through them and times 1 otherwise. A LoRA run is
therefore not counted as 6N over the whole base model (that reads MFU 1.5x too high). Only
matmul weights count: embedding tables, position tables, norms and biases do not.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from flax import nnx

from vlm3r_jax.models.vlm3r import VLM3RConfig

_MATMUL_NAMES = ("kernel", "lora_a", "lora_b", "patch_kernel")


@dataclasses.dataclass(frozen=True)
class Part:
    """One stage of the forward pass, in execution order: matmul parameters (trainable and
    frozen), the tokens per row each parameter is applied to, and the forward attention FLOPs
    per row."""

    name: str
    tokens: float
    trainable: int
    frozen: int
    attention_fwd: float = 0.0


def step_flops_per_row(parts: Sequence[Part]) -> float:
    """Model FLOPs of forward + backward for one row, by the rule in the module docstring."""
    total, grad_flows = 0.0, False
    for p in parts:
        grad_flows = grad_flows or p.trainable > 0
        frozen_mult = 4.0 if grad_flows else 2.0
        total += p.tokens * (6.0 * p.trainable + frozen_mult * p.frozen)
        total += p.attention_fwd * (3.0 if grad_flows else 1.0)
    return total


def matmul_params(state: Any, is_trainable: Any = None) -> tuple[int, int]:
    """(trainable, frozen) counts of matmul weights in an (abstract) ``nnx.State``;
    ``is_trainable(path, var)`` is an NNX filter such as ``trainable_filter(...)``."""
    trainable = frozen = 0
    for path, var in nnx.to_flat_state(state):
        if not isinstance(var, nnx.Param) or str(path[-1]) not in _MATMUL_NAMES:
            continue
        n = math.prod(var.shape)
        if is_trainable is not None and is_trainable(path, var):
            trainable += n
        else:
            frozen += n
    return trainable, frozen


def attention_fwd(layers: int, heads: int, head_dim: int, t_q: float, t_kv: float, causal: bool = False) -> float:
    """Forward FLOPs of QK^T and PV: 4 T_q T_kv H d per layer (half when causal)."""
    return layers * 4.0 * heads * head_dim * t_q * t_kv * (0.5 if causal else 1.0)


def vlm3r_parts(vcfg: VLM3RConfig, state: nnx.State, is_trainable: Any, num_frames: int, seq_len: int,
                max_labels: int = 0, geometry_online: bool = True) -> list[Part]:
    """The stages of one VLM-3R train step per row: SigLIP, CUT3R (when it runs online; its
    attention is not counted), fusion, projector, the LLM body at ``seq_len`` spliced tokens and
    the LM head at the labelled positions (``max_labels``, 0 = every position)."""

    def counts(name: str, exclude: str | None = None) -> tuple[int, int]:
        sub = nnx.from_flat_state([(p, v) for p, v in nnx.to_flat_state(state[name])
                                   if exclude is None or str(p[0]) != exclude])
        return matmul_params(sub, lambda p, v: is_trainable((name, *p), v))

    frames, patches = float(num_frames), float(vcfg.vision.num_patches)
    vc, lc = vcfg.vision, vcfg.llm
    parts = [Part("vision_tower", frames * patches, *counts("vision_tower"),
                  frames * attention_fwd(vc.layers, vc.num_attention_heads, vc.head_dim, patches, patches))]
    if vcfg.geometry is not None:
        gh, gw = vcfg.geometry_image_size
        geo_tokens = 1.0 + (gh // vcfg.geometry.patch_size) * (gw // vcfg.geometry.patch_size)
        if geometry_online:
            parts.append(Part("spatial_tower", frames * geo_tokens, *counts("spatial_tower")))
        fc = vcfg.fusion
        parts.append(Part("fusion_block", frames * patches, *counts("fusion_block"),
                          frames * attention_fwd(1, fc.num_heads, fc.attn_dim // fc.num_heads, patches, geo_tokens)))
    parts.append(Part("mm_projector", frames * patches, *counts("mm_projector")))
    parts.append(Part("llm", float(seq_len), *counts("llm", exclude="lm_head"),
                      attention_fwd(lc.num_layers, lc.num_heads, lc.head_dim, seq_len, seq_len, causal=True)))
    head = lc.hidden_size * lc.vocab_size
    k = seq_len - 1 if max_labels <= 0 else min(max_labels, seq_len - 1)
    parts.append(Part("lm_head", float(k), 0, head))
    return parts
