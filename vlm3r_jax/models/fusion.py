"""Spatial-Visual-View Fusion: per-frame cross-attention of SigLIP tokens onto CUT3R tokens.

This is the reference ``CrossAttentionFusion`` (``fusion_block="cross_attention"``). The
parameter names follow the released ``non_lora_trainables.bin`` so the weights load by name:

    qn = clip_norm(x)                      x: SigLIP tokens  [B, P, Dc]
    sn = spatial_encoder_norm(z)           z: CUT3R tokens   [B, G, Ds] (camera token first)
    q, k, v = clip_query_proj(qn), spatial_encoder_key_proj(sn), spatial_encoder_value_proj(sn)
    a = cross_attention(q, k, v)           a full nn.MultiheadAttention: its OWN q/k/v in-projections,
                                           heads, softmax, its own out_proj
    y = dropout(out_norm(out_proj(a)) + x) the residual is the UN-normalised x; dropout covers the sum

The two linear maps in series on each of q/k/v (and on the output) are redundant
mathematically but both exist in the checkpoint, so both are kept. ``B`` is frames (times
videos): attention never crosses frames.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from vlm3r_jax import sharding
from vlm3r_jax.layers import LayerNorm, Linear, dot_product_attention

FUSION_BLOCKS = ("cross_attention",)


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """Sizes of the fusion block. Defaults are the released model's."""

    fusion_block: str = "cross_attention"
    d_clip: int = 1152  # mm_hidden_size (SigLIP width)
    d_spatial: int = 768  # spatial_feature_dim (CUT3R decoder width)
    d_attn: int | None = None  # None -> d_clip, as in the reference
    num_heads: int = 18  # hard-coded in the reference
    dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    attention_impl: str = "xla"

    @property
    def attn_dim(self) -> int:
        return self.d_attn or self.d_clip

    def __post_init__(self):
        if self.fusion_block not in FUSION_BLOCKS:
            raise ValueError(f"unknown fusion_block {self.fusion_block!r}; supported: {FUSION_BLOCKS}")
        if self.attn_dim % self.num_heads:
            raise ValueError(
                f"fusion attention width {self.attn_dim} is not divisible by num_heads={self.num_heads} "
                "(the reference hard-codes 18 heads, so mm_hidden_size must be a multiple of 18)"
            )


class MultiHeadAttention(nnx.Module):
    """``torch.nn.MultiheadAttention`` (batch_first, no masks, no attention dropout) with the
    packed ``in_proj_weight`` split into ``q_proj``/``k_proj``/``v_proj``."""

    def __init__(self, dim: int, num_heads: int, *, impl: str = "xla", param_dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.impl = impl
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.q_proj = Linear(dim, dim, axes=("embed", "heads"), **kw)
        self.k_proj = Linear(dim, dim, axes=("embed", "heads"), **kw)
        self.v_proj = Linear(dim, dim, axes=("embed", "heads"), **kw)
        self.out_proj = Linear(dim, dim, axes=("heads", "embed"), **kw)

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, kv_mask: jax.Array | None = None) -> jax.Array:
        """q: [B, Tq, D], k/v: [B, Tk, D], kv_mask: bool [B, Tk] (True = real token) -> [B, Tq, D]."""
        split = lambda t: rearrange(t, "b t (n h) -> b t n h", n=self.num_heads)  # noqa: E731
        qh, kh, vh = split(self.q_proj(q)), split(self.k_proj(k)), split(self.v_proj(v))
        mask = None if kv_mask is None else kv_mask[:, None, None, :]
        out = dot_product_attention(qh, kh, vh, mask=mask, implementation=self.impl)
        return self.out_proj(rearrange(out, "b t n h -> b t (n h)"))


class CrossAttentionFusion(nnx.Module):
    """SigLIP tokens [B, P, Dc] attend to 3D tokens [B, G, Ds] -> fused tokens [B, P, Dc]."""

    def __init__(self, cfg: FusionConfig, *, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        d, kw = cfg.attn_dim, dict(param_dtype=param_dtype, rngs=rngs)
        self.clip_norm = LayerNorm(cfg.d_clip, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.spatial_encoder_norm = LayerNorm(cfg.d_spatial, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.clip_query_proj = Linear(cfg.d_clip, d, axes=("embed", "mlp"), **kw)
        self.spatial_encoder_key_proj = Linear(cfg.d_spatial, d, axes=("embed", "mlp"), **kw)
        self.spatial_encoder_value_proj = Linear(cfg.d_spatial, d, axes=("embed", "mlp"), **kw)
        self.cross_attention = MultiHeadAttention(d, cfg.num_heads, impl=cfg.attention_impl, **kw)
        self.out_proj = Linear(d, cfg.d_clip, axes=("mlp", "embed"), **kw)
        self.out_norm = LayerNorm(cfg.d_clip, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.dropout = nnx.Dropout(cfg.dropout, deterministic=True, rngs=rngs)

    def __call__(self, x: jax.Array, z: jax.Array, kv_mask: jax.Array | None = None) -> jax.Array:
        """x: SigLIP tokens [B, P, Dc]; z: 3D tokens [B, G, Ds]; kv_mask: bool [B, G] -> [B, P, Dc].

        Dropout is active only after ``model.train()`` (NNX), matching the reference's
        ``nn.Dropout`` in train mode.
        """
        x = sharding.constrain(x, ("frames", "length", "act_embed"))
        z = z.astype(x.dtype)  # the reference casts the CUT3R tokens to the model dtype
        qn, sn = self.clip_norm(x), self.spatial_encoder_norm(z)
        q = self.clip_query_proj(qn)
        k = self.spatial_encoder_key_proj(sn)
        v = self.spatial_encoder_value_proj(sn)
        a = self.cross_attention(q, k, v, kv_mask)
        return self.dropout(self.out_norm(self.out_proj(a)) + x)


# --- reference state-dict names ----------------------------------------------------------------------
# Our parameter paths mirror the reference module tree; the differences are mechanical: Linear
# ``kernel`` [in, out] <-> torch ``weight`` [out, in], LayerNorm ``scale`` <-> ``weight``, and the
# q/k/v projections of an ``nn.MultiheadAttention`` (``cross_attention`` / ``self_attention``), which
# torch packs into one ``in_proj_weight`` [3d, d] / ``in_proj_bias`` [3d] (q, k, v row blocks).
_MHA_IN = re.compile(r"^(.*\b(?:cross_attention|self_attention))\.([qkv])_proj\.(kernel|bias)$")


def reference_name(path: str) -> tuple[str, int | None, bool]:
    """Our param path -> (reference key, q/k/v block index or None, transpose?)."""
    m = _MHA_IN.match(path)
    if m:
        block = "qkv".index(m.group(2))
        return f"{m.group(1)}.in_proj_{'weight' if m.group(3) == 'kernel' else 'bias'}", block, m.group(3) == "kernel"
    if path.endswith(".kernel"):
        return path[: -len(".kernel")] + ".weight", None, True
    if path.endswith(".scale"):
        return path[: -len(".scale")] + ".weight", None, False
    return path, None, False


def export_fusion(module: nnx.Module) -> dict[str, Any]:
    """A fusion block's parameters as the reference state dict (numpy, torch layouts, no prefix)."""
    import numpy as np

    from vlm3r_jax.convert.assign import flat_arrays

    flat = flat_arrays(nnx.state(module, nnx.Param))
    out: dict[str, Any] = {}
    packed: dict[str, dict[int, Any]] = {}
    for path, arr in flat.items():
        key, block, t = reference_name(path)
        arr = np.swapaxes(arr, 0, 1) if t else arr
        if block is None:
            out[key] = np.ascontiguousarray(arr)
        else:
            packed.setdefault(key, {})[block] = arr
    for key, blocks in packed.items():
        if sorted(blocks) != [0, 1, 2]:
            raise ValueError(f"fusion export: {key} needs q, k and v blocks, got {sorted(blocks)}")
        out[key] = np.ascontiguousarray(np.concatenate([blocks[0], blocks[1], blocks[2]], axis=0))
    return out


def reference_mapping(state: Any, prefix: str = "model.fusion_block.", ours: str = "") -> dict[str, Any]:
    """``{our path (under ours): Src(reference key under prefix, transform)}`` for every parameter
    of a fusion block's (abstract) ``state`` - the loader's name map, any variant."""
    from vlm3r_jax.convert.assign import Src, flat_variables

    def pick(block: int | None, t: bool):
        def fn(w):
            if block is not None:
                d = w.shape[0] // 3
                w = w[block * d:(block + 1) * d]
            return w.swapaxes(0, 1) if t else w

        return fn

    m = {}
    for path in flat_variables(state):
        key, block, t = reference_name(path)
        m[ours + path] = Src(prefix + key, pick(block, t)) if (t or block is not None) else Src(prefix + key)
    return m
