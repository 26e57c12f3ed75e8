"""Scaled dot-product attention: a fused path (``jax.nn.dot_product_attention``) and a plain
einsum reference path that tests use to check it.

Layout everywhere is ``[B, T, N, H]`` (batch, length, heads, head_dim). Grouped-query
attention works when K/V have fewer heads than Q (``N_q % N_kv == 0``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "cudnn", "reference", "auto")


def resolve_implementation(impl: str) -> str:
    """``auto`` picks cuDNN flash attention on GPU and XLA elsewhere."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
    if impl == "auto":
        return "cudnn" if jax.default_backend() == "gpu" else "xla"
    return impl


def _reference(q, k, v, mask, bias, scale):
    n_q, n_kv = q.shape[2], k.shape[2]
    if n_q != n_kv:
        rep = n_q // n_kv
        k = jnp.repeat(k, rep, axis=2)
        v = jnp.repeat(v, rep, axis=2)
    logits = jnp.einsum("bqnh,bknh->bnqk", q.astype(jnp.float32), k.astype(jnp.float32)) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bnqk,bknh->bqnh", probs, v.astype(jnp.float32))
    return out.astype(q.dtype)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    implementation: str = "xla",
) -> jax.Array:
    """q: [B, Tq, Nq, H], k/v: [B, Tk, Nkv, H], mask: bool broadcastable to [B, N, Tq, Tk]
    (True = attend), bias: float broadcastable to [B, N, Tq, Tk] -> [B, Tq, Nq, H]."""
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads {q.shape[2]} must be a multiple of key/value heads {k.shape[2]}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    impl = resolve_implementation(implementation)
    if is_causal:
        causal = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool), k.shape[1] - q.shape[1])
        mask = causal if mask is None else jnp.logical_and(mask, causal)
    if impl == "reference":
        return _reference(q, k, v, mask, bias, scale)
    if impl == "cudnn" and (q.dtype not in (jnp.bfloat16, jnp.float16)):
        impl = "xla"  # cuDNN flash attention supports half precision only
    # jax's fused path asserts the mask has four dims.
    if mask is not None:
        mask = jnp.broadcast_to(mask, mask.shape[:0] + (1,) * (4 - mask.ndim) + mask.shape)
    if bias is not None:
        bias = jnp.broadcast_to(bias, (1,) * (4 - bias.ndim) + bias.shape).astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation=impl)
