"""Transformer blocks of CUT3R: encoder block (self-attention), decoder block (self + cross
attention, used by both decoder streams and by the pose memory) and the adaLN-modulated block
of the pose-conditioned DPT branch.

Attribute names mirror the reference modules (``attn.qkv``, ``cross_attn.projq``, ``norm_y``,
``mlp.fc1``...) so the checkpoint name map is mechanical. Layout of activations: [B, T, D].
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vlm3r_jax.layers import LayerNorm, Linear, dot_product_attention
from vlm3r_jax.layers.activations import gelu_exact
from vlm3r_jax.models.cut3r.rope2d import apply_rope2d
from vlm3r_jax.sharding import constrain


@dataclasses.dataclass(frozen=True)
class RopeSpec:
    """Static RoPE settings carried by an attention layer (None = no RoPE)."""

    base: float
    f0: float = 1.0
    fp16_rounding: bool = False

    def __call__(self, x: jax.Array, pos: jax.Array | None) -> jax.Array:
        if pos is None:
            return x
        return apply_rope2d(x, pos, self.base, self.f0, fp16_rounding=self.fp16_rounding)


class Mlp(nnx.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int, out: int | None = None, *, param_dtype: Any, rngs: nnx.Rngs):
        self.fc1 = Linear(dim, hidden, axes=("embed", "mlp"), param_dtype=param_dtype, rngs=rngs)
        self.fc2 = Linear(hidden, out or dim, axes=("mlp", "embed"), param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = gelu_exact(self.fc1(x))
        h = constrain(h, ("batch", "length", "act_mlp"))
        return _residual(self.fc2(h))


def _residual(x: jax.Array) -> jax.Array:
    """Pins an activation to the residual-stream layout (batch-sharded, embed replicated).

    Applied to every block input and every attention/MLP output. Without it, on a data x fsdp x
    tensor mesh a stream whose ``embed`` dim is tensor-sharded (the output of ``decoder_embed`` or
    of the pose memory's ``proj_q``) meets an fsdp-sharded one (an output projection) in a residual
    add or concat, and XLA's SPMD partitioner (jax 0.10.2, CPU) computes the attention output
    wrongly, by O(1). The pins are active under ``sharding.use_mesh`` only."""
    return constrain(x, ("batch",) + (None,) * (x.ndim - 2) + ("act_embed",))


def _heads(x: jax.Array, n: int) -> jax.Array:
    b, t, d = x.shape
    return x.reshape(b, t, n, d // n)


class Attention(nnx.Module):
    """Self-attention with a fused ``qkv`` projection laid out [q | k | v] (each split into heads
    of contiguous head_dim) and 2-D RoPE on q and k."""

    def __init__(self, dim: int, num_heads: int, *, rope: RopeSpec | None, impl: str, param_dtype: Any, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.rope = rope
        self.impl = impl
        self.qkv = Linear(dim, 3 * dim, axes=("embed", "heads"), param_dtype=param_dtype, rngs=rngs)
        self.proj = Linear(dim, dim, axes=("heads", "embed"), param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, pos: jax.Array | None) -> jax.Array:
        """x: [B, T, D], pos: int [B|1, T, 2] or None -> [B, T, D]."""
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        q, k, v = (_heads(a, self.num_heads) for a in (q, k, v))
        if self.rope is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        o = dot_product_attention(q, k, v, implementation=self.impl)
        return _residual(self.proj(o.reshape(b, t, d)))


class CrossAttention(nnx.Module):
    """Cross-attention ``projq/projk/projv/proj``; q rotated by the query positions, k by the key
    positions."""

    def __init__(self, dim: int, num_heads: int, *, rope: RopeSpec | None, impl: str, param_dtype: Any, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.rope = rope
        self.impl = impl
        self.projq = Linear(dim, dim, axes=("embed", "heads"), param_dtype=param_dtype, rngs=rngs)
        self.projk = Linear(dim, dim, axes=("embed", "heads"), param_dtype=param_dtype, rngs=rngs)
        self.projv = Linear(dim, dim, axes=("embed", "heads"), param_dtype=param_dtype, rngs=rngs)
        self.proj = Linear(dim, dim, axes=("heads", "embed"), param_dtype=param_dtype, rngs=rngs)

    def __call__(
        self, query: jax.Array, key: jax.Array, value: jax.Array, qpos: jax.Array | None, kpos: jax.Array | None
    ) -> jax.Array:
        """query: [B, Tq, D], key/value: [B, Tk, D] -> [B, Tq, D]."""
        b, tq, d = query.shape
        q = _heads(self.projq(query), self.num_heads)
        k = _heads(self.projk(key), self.num_heads)
        v = _heads(self.projv(value), self.num_heads)
        if self.rope is not None:
            q, k = self.rope(q, qpos), self.rope(k, kpos)
        o = dot_product_attention(q, k, v, implementation=self.impl)
        return _residual(self.proj(o.reshape(b, tq, d)))


class EncoderBlock(nnx.Module):
    """Pre-LN ViT block: x += attn(norm1(x)); x += mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        *,
        eps: float,
        rope: RopeSpec | None,
        impl: str,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        self.norm1 = LayerNorm(dim, eps=eps, param_dtype=param_dtype)
        self.attn = Attention(dim, num_heads, rope=rope, impl=impl, param_dtype=param_dtype, rngs=rngs)
        self.norm2 = LayerNorm(dim, eps=eps, param_dtype=param_dtype)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, pos: jax.Array | None) -> jax.Array:
        x = _residual(x)
        x = x + self.attn(self.norm1(x), pos)
        x = _residual(x)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nnx.Module):
    """x += SelfAttn(norm1(x)); y_ = norm_y(y); x += CrossAttn(norm2(x), y_, y_); x += MLP(norm3(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        *,
        eps: float,
        rope: RopeSpec | None,
        impl: str,
        param_dtype: Any,
        rngs: nnx.Rngs,
        norm_mem: bool = True,
    ):
        self.norm1 = LayerNorm(dim, eps=eps, param_dtype=param_dtype)
        self.attn = Attention(dim, num_heads, rope=rope, impl=impl, param_dtype=param_dtype, rngs=rngs)
        self.cross_attn = CrossAttention(dim, num_heads, rope=rope, impl=impl, param_dtype=param_dtype, rngs=rngs)
        self.norm2 = LayerNorm(dim, eps=eps, param_dtype=param_dtype)
        self.norm3 = LayerNorm(dim, eps=eps, param_dtype=param_dtype)
        self.norm_y = LayerNorm(dim, eps=eps, param_dtype=param_dtype) if norm_mem else None
        self.mlp = Mlp(dim, int(dim * mlp_ratio), param_dtype=param_dtype, rngs=rngs)

    def __call__(
        self, x: jax.Array, y: jax.Array, xpos: jax.Array | None = None, ypos: jax.Array | None = None
    ) -> jax.Array:
        """x: [B, Tx, D] (updated stream), y: [B, Ty, D] (memory, read only) -> [B, Tx, D]."""
        x, y = _residual(x), _residual(y)
        x = x + self.attn(self.norm1(x), xpos)
        y_ = self.norm_y(y) if self.norm_y is not None else y
        x = x + self.cross_attn(self.norm2(x), y_, y_, xpos, ypos)
        x = _residual(x)
        return x + self.mlp(self.norm3(x))


class ModLN(nnx.Module):
    """adaLN: ``LN(x) * (1 + scale) + shift`` with ``shift, scale = mlp(SiLU(mod)).chunk(2)``.
    The reference's ``mlp`` is ``Sequential(SiLU, Linear)``, so its Linear is ``mlp.1``."""

    def __init__(self, dim: int, mod_dim: int, *, eps: float, param_dtype: Any, rngs: nnx.Rngs):
        self.norm = LayerNorm(dim, eps=eps, param_dtype=param_dtype)
        self.mlp = Linear(mod_dim, 2 * dim, axes=("embed", "mlp"), param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mod: jax.Array) -> jax.Array:
        """x: [B, T, D], mod: [B, Dm] -> [B, T, D]."""
        shift, scale = jnp.split(self.mlp(jax.nn.silu(mod)), 2, axis=-1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


class ConditionModulationBlock(nnx.Module):
    """ViT block whose two LayerNorms are adaLN-modulated by a conditioning vector (the pose token)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        *,
        eps: float,
        rope: RopeSpec | None,
        impl: str,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        self.norm1 = ModLN(dim, dim, eps=eps, param_dtype=param_dtype, rngs=rngs)
        self.attn = Attention(dim, num_heads, rope=rope, impl=impl, param_dtype=param_dtype, rngs=rngs)
        self.norm2 = ModLN(dim, dim, eps=eps, param_dtype=param_dtype, rngs=rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mod: jax.Array, pos: jax.Array | None) -> jax.Array:
        x = _residual(x)
        x = x + self.attn(self.norm1(x, mod), pos)
        return x + self.mlp(self.norm2(x, mod))
