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
from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from vlm3r_jax import sharding
from vlm3r_jax.layers import LayerNorm, Linear, dot_product_attention
from vlm3r_jax.layers.activations import gelu_exact

# config ``fusion_block`` -> (heads the reference hard-codes, where it runs, which CUT3R tokens it sees).
# "before": on the SigLIP features, then the projector; "after": on the projected features
# (``encode_images`` runs mm_projector first for these). Tokens: "select" = per
# ``spatial_tower_select_feature``; "all" = camera + patch (the reference fuses ``transformer`` only
# then); "patch" = the 729 patch tokens, whatever the selection.
FUSION_VARIANTS: dict[str, tuple[int, str, str]] = {
    "cross_attention": (18, "before", "select"),
    "cross_attention_with_mlp": (18, "before", "patch"),
    "transformer": (18, "before", "all"),
    "mlp_after_clip_proj": (0, "after", "patch"),
    "concat_mlp": (0, "after", "patch"),
    "concat_self_attention": (36, "after", "patch"),
}
FUSION_BLOCKS = tuple(FUSION_VARIANTS)
# Reference choices that are not built here: they need other inputs (point maps) or a deeper
# multi-layer stack (llava_3d_fusion_block, video_3d_llm_fusion_block, <N>_layer_cross_attention).
UNSUPPORTED_FUSION_BLOCKS = ("llava_3d_fusion_block", "video_3d_llm_fusion_block", "<N>_layer_cross_attention")


def reference_heads(fusion_block: str) -> int:
    """The head count the reference hard-codes for ``fusion_block`` (0: no attention)."""
    return FUSION_VARIANTS[fusion_block][0]


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """Sizes of the fusion block. Defaults are the released model's."""

    fusion_block: str = "cross_attention"
    d_clip: int = 1152  # mm_hidden_size (SigLIP width)
    d_spatial: int = 768  # spatial_feature_dim (CUT3R decoder width)
    d_attn: int | None = None  # None -> d_clip, as in the reference
    num_heads: int = 18  # hard-coded in the reference (36 for concat_self_attention)
    dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    attention_impl: str = "auto"
    d_llm: int | None = None  # LLM width, for the variants that run after the projector
    mlp_ratio: float = 4.0  # cross_attention_with_mlp / transformer / concat_mlp hidden = ratio * width

    @property
    def attn_dim(self) -> int:
        return self.d_attn or self.d_clip

    @property
    def after_projector(self) -> bool:
        return FUSION_VARIANTS[self.fusion_block][1] == "after"

    @property
    def token_policy(self) -> str:
        return FUSION_VARIANTS[self.fusion_block][2]

    def __post_init__(self):
        if self.fusion_block not in FUSION_VARIANTS:
            raise ValueError(
                f"unknown fusion_block {self.fusion_block!r}; valid choices: {list(FUSION_VARIANTS)} "
                f"(reference blocks not implemented here: {list(UNSUPPORTED_FUSION_BLOCKS)})"
            )
        if self.after_projector:
            if self.fusion_block == "concat_self_attention" and self.d_llm and (2 * self.d_llm) % self.num_heads:
                raise ValueError(
                    f"concat_self_attention attends over 2 * d_llm = {2 * self.d_llm} channels, not divisible by "
                    f"num_heads={self.num_heads} (the reference hard-codes 36)"
                )
        elif self.attn_dim % self.num_heads:
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


class _MLP(nnx.Module):
    """The reference ``MLP`` of cross_attention_mlp.py: fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, drop: float, *, param_dtype: Any, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Linear(d_in, d_hidden, axes=("embed", "mlp"), **kw)
        self.fc2 = Linear(d_hidden, d_out, axes=("mlp", "embed"), **kw)
        self.dropout1 = nnx.Dropout(drop, deterministic=True, rngs=rngs)
        self.dropout2 = nnx.Dropout(drop, deterministic=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dropout2(self.fc2(self.dropout1(gelu_exact(self.fc1(x)))))


def _sequential(d_in: int, d_hidden: int, d_out: int, *, param_dtype: Any, rngs: nnx.Rngs) -> nnx.List:
    """``nn.Sequential(Linear, act, Linear)``: index 1 (the activation) holds no weights, so the
    parameter paths are ``0.*`` and ``2.*`` as in the torch state dict."""
    kw = dict(param_dtype=param_dtype, rngs=rngs)
    return nnx.List([Linear(d_in, d_hidden, axes=("embed", "mlp"), **kw), None,
                     Linear(d_hidden, d_out, axes=("mlp", "embed"), **kw)])


def _run_sequential(seq: nnx.List, x: jax.Array, act) -> jax.Array:
    return seq[2](act(seq[0](x)))


class CrossAttentionFusionWithMLP(nnx.Module):
    """``cross_attention_with_mlp``: the q/k/v projections are 2-layer GELU MLPs (hidden
    ``mlp_ratio * d_attn``), then ``y = x + dropout(out_proj(out_norm_attn(attn)))``. ``out_norm``
    exists in the reference (and its checkpoints) but is never applied."""

    def __init__(self, cfg: FusionConfig, *, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        d, kw = cfg.attn_dim, dict(param_dtype=param_dtype, rngs=rngs)
        hidden = int(d * cfg.mlp_ratio)
        self.clip_norm = LayerNorm(cfg.d_clip, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.spatial_encoder_norm = LayerNorm(cfg.d_spatial, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.clip_query_proj = _MLP(cfg.d_clip, hidden, d, cfg.dropout, **kw)
        self.spatial_encoder_key_proj = _MLP(cfg.d_spatial, hidden, d, cfg.dropout, **kw)
        self.spatial_encoder_value_proj = _MLP(cfg.d_spatial, hidden, d, cfg.dropout, **kw)
        self.cross_attention = MultiHeadAttention(d, cfg.num_heads, impl=cfg.attention_impl, **kw)
        self.out_norm = LayerNorm(cfg.d_clip, eps=cfg.layer_norm_eps, param_dtype=param_dtype)  # unused
        self.out_norm_attn = LayerNorm(d, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.out_proj = Linear(d, cfg.d_clip, axes=("mlp", "embed"), **kw)
        self.dropout = nnx.Dropout(cfg.dropout, deterministic=True, rngs=rngs)

    def __call__(self, x: jax.Array, z: jax.Array, kv_mask: jax.Array | None = None) -> jax.Array:
        """x [B, P, Dc], z [B, G, Ds] -> [B, P, Dc]."""
        z = z.astype(x.dtype)
        qn, sn = self.clip_norm(x), self.spatial_encoder_norm(z)
        a = self.cross_attention(self.clip_query_proj(qn), self.spatial_encoder_key_proj(sn),
                                 self.spatial_encoder_value_proj(sn), kv_mask)
        return x + self.dropout(self.out_proj(self.out_norm_attn(a)))


class TransformerFusion(nnx.Module):
    """``transformer``: r = dropout(attn) + x; y = dropout(ffn(out_norm(r))) + r with
    ``ffn = Linear(d, 4d) -> ReLU -> Linear(4d, Dc)`` (no outer out_proj)."""

    def __init__(self, cfg: FusionConfig, *, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        d, kw = cfg.attn_dim, dict(param_dtype=param_dtype, rngs=rngs)
        if d != cfg.d_clip:
            raise ValueError(f"transformer fusion adds the attention output to x: d_attn {d} must equal d_clip {cfg.d_clip}")
        self.clip_norm = LayerNorm(cfg.d_clip, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.spatial_encoder_norm = LayerNorm(cfg.d_spatial, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.clip_query_proj = Linear(cfg.d_clip, d, axes=("embed", "mlp"), **kw)
        self.spatial_encoder_key_proj = Linear(cfg.d_spatial, d, axes=("embed", "mlp"), **kw)
        self.spatial_encoder_value_proj = Linear(cfg.d_spatial, d, axes=("embed", "mlp"), **kw)
        self.cross_attention = MultiHeadAttention(d, cfg.num_heads, impl=cfg.attention_impl, **kw)
        self.out_norm = LayerNorm(d, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.ffn = _sequential(d, int(cfg.mlp_ratio * d), cfg.d_clip, **kw)
        self.dropout = nnx.Dropout(cfg.dropout, deterministic=True, rngs=rngs)

    def __call__(self, x: jax.Array, z: jax.Array, kv_mask: jax.Array | None = None) -> jax.Array:
        """x [B, P, Dc], z [B, G, Ds] -> [B, P, Dc]."""
        z = z.astype(x.dtype)
        qn, sn = self.clip_norm(x), self.spatial_encoder_norm(z)
        a = self.cross_attention(self.clip_query_proj(qn), self.spatial_encoder_key_proj(sn),
                                 self.spatial_encoder_value_proj(sn), kv_mask)
        r = self.dropout(a) + x
        return self.dropout(_run_sequential(self.ffn, self.out_norm(r), jax.nn.relu)) + r


class MLPFusion(nnx.Module):
    """``mlp_after_clip_proj`` (after the projector): y = x + MLP(patch tokens), the MLP being
    ``Linear(Ds, D) -> GELU -> Linear(D, D)`` (``spatial_features_mlp``)."""

    def __init__(self, cfg: FusionConfig, *, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.spatial_features_mlp = _sequential(cfg.d_spatial, cfg.d_llm, cfg.d_llm, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, z: jax.Array, kv_mask: jax.Array | None = None) -> jax.Array:
        """x projected features [B, P, D], z patch tokens [B, P, Ds] (same P) -> [B, P, D]."""
        _same_tokens(x, z, self.cfg.fusion_block)
        return x + _run_sequential(self.spatial_features_mlp, z.astype(x.dtype), gelu_exact)


class ConcatMLPFusion(nnx.Module):
    """``concat_mlp`` (after the projector): y = fusion_mlp([x, proj(z)]) with
    ``spatial_features_proj_mlp = Linear(Ds, D) -> GELU -> Linear(D, D)`` and
    ``fusion_mlp = Linear(2D, 4D) -> GELU -> Linear(4D, D)``."""

    def __init__(self, cfg: FusionConfig, *, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        d, kw = cfg.d_llm, dict(param_dtype=param_dtype, rngs=rngs)
        self.spatial_features_proj_mlp = _sequential(cfg.d_spatial, d, d, **kw)
        self.fusion_mlp = _sequential(2 * d, int(cfg.mlp_ratio * d), d, **kw)

    def __call__(self, x: jax.Array, z: jax.Array, kv_mask: jax.Array | None = None) -> jax.Array:
        """x [B, P, D], z [B, P, Ds] -> [B, P, D]."""
        _same_tokens(x, z, self.cfg.fusion_block)
        s = _run_sequential(self.spatial_features_proj_mlp, z.astype(x.dtype), gelu_exact)
        return _run_sequential(self.fusion_mlp, jnp.concatenate([x, s], axis=-1), gelu_exact)


class ConcatSelfAttentionFusion(nnx.Module):
    """``concat_self_attention`` (after the projector): c = [x, proj(z)] (2D channels);
    r = dropout(MHA(LN(c))) + c; y = output_proj(post_attn_norm(r)). The reference's dropout on
    the attention weights (training only) is not applied; evaluation is exact."""

    def __init__(self, cfg: FusionConfig, *, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        d, kw = cfg.d_llm, dict(param_dtype=param_dtype, rngs=rngs)
        self.spatial_features_proj_mlp = _sequential(cfg.d_spatial, d, d, **kw)
        self.pre_attn_norm = LayerNorm(2 * d, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.self_attention = MultiHeadAttention(2 * d, cfg.num_heads, impl=cfg.attention_impl, **kw)
        self.post_attn_norm = LayerNorm(2 * d, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.output_proj = Linear(2 * d, d, axes=("mlp", "embed"), **kw)
        self.dropout = nnx.Dropout(cfg.dropout, deterministic=True, rngs=rngs)

    def __call__(self, x: jax.Array, z: jax.Array, kv_mask: jax.Array | None = None) -> jax.Array:
        """x [B, P, D], z [B, P, Ds] -> [B, P, D]."""
        _same_tokens(x, z, self.cfg.fusion_block)
        s = _run_sequential(self.spatial_features_proj_mlp, z.astype(x.dtype), gelu_exact)
        c = jnp.concatenate([x, s], axis=-1)
        n = self.pre_attn_norm(c)
        r = self.dropout(self.self_attention(n, n, n)) + c
        return self.output_proj(self.post_attn_norm(r))


def _same_tokens(x: jax.Array, z: jax.Array, name: str) -> None:
    if x.shape[:-1] != z.shape[:-1]:
        raise ValueError(
            f"{name} fuses token by token: features {tuple(x.shape)} and CUT3R patch tokens {tuple(z.shape)} must "
            "have the same [frames, tokens] (the SigLIP grid must equal the CUT3R patch grid)"
        )


_CLASSES = {
    "cross_attention": CrossAttentionFusion,
    "cross_attention_with_mlp": CrossAttentionFusionWithMLP,
    "transformer": TransformerFusion,
    "mlp_after_clip_proj": MLPFusion,
    "concat_mlp": ConcatMLPFusion,
    "concat_self_attention": ConcatSelfAttentionFusion,
}


def build_fusion(cfg: FusionConfig, *, d_llm: int | None = None, param_dtype: Any = jnp.float32,
                 rngs: nnx.Rngs) -> nnx.Module:
    """The fusion block named by ``cfg.fusion_block`` (``d_llm``: the LLM width, used by the
    variants that run after the projector when ``cfg.d_llm`` is unset)."""
    if cfg.after_projector and cfg.d_llm is None:
        if d_llm is None:
            raise ValueError(f"fusion_block {cfg.fusion_block!r} runs after the projector: give d_llm (LLM width)")
        cfg = dataclasses.replace(cfg, d_llm=d_llm)
    return _CLASSES[cfg.fusion_block](cfg, param_dtype=param_dtype, rngs=rngs)
