"""Scaled dot-product attention: a fused path (``jax.nn.dot_product_attention``), a CPU path
that loops over (batch, head) pairs, and a plain einsum reference path that tests use to check
them.

Why a CPU path: XLA:CPU computes the batched [B, N, Tq, Tk] score tensor and its softmax as
separate passes over memory; for SigLIP's 729-token frames that is 3-4x slower than the matmuls
themselves. One (batch, head) at a time keeps the [Tq, Tk] block in cache and runs at the
matmul rate (about the speed of torch's CPU flash kernel); ``auto`` uses it on CPU for
prefill-sized queries.

Layout everywhere is ``[B, T, N, H]`` (batch, length, heads, head_dim). Grouped-query
attention works when K/V have fewer heads than Q (``N_q % N_kv == 0``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "cudnn", "cpu", "reference", "auto")
CPU_MIN_QUERIES = 64  # below this (decode steps) the per-head loop's overhead outweighs its gain


_TARGET_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("attention_target", default=None)


@contextlib.contextmanager
def target_platform(platform: str) -> Iterator[None]:
    """Resolve ``auto`` for ``platform`` ("cpu", "gpu", "tpu") instead of the default backend,
    e.g. when a CPU host compiles ahead of time for TPU devices."""
    token = _TARGET_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TARGET_PLATFORM.reset(token)


def resolve_implementation(impl: str) -> str:
    """``auto`` picks cuDNN flash attention on GPU, the per-head loop on CPU, XLA elsewhere."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
    if impl == "auto":
        platform = _TARGET_PLATFORM.get() or jax.default_backend()
        return {"gpu": "cudnn", "cuda": "cudnn", "cpu": "cpu"}.get(platform, "xla")
    return impl


def _per_head(q, k, v, mask, bias, scale):
    """``lax.map`` over the B * Nq (batch, head) pairs; mask/bias as in :func:`_reference`."""
    b, tq, nq, h = q.shape
    rep = nq // k.shape[2]
    qt, kt, vt = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # [B, N, T, H]

    def pick(x, i_b, i_n):
        """x broadcastable to [B, N, Tq, Tk] -> its [Tq, Tk] block for (i_b, i_n)."""
        x = x.reshape((1,) * (4 - x.ndim) + x.shape)
        return x[i_b if x.shape[0] > 1 else 0, i_n if x.shape[1] > 1 else 0]

    def one(i):
        i_b, i_n = i // nq, i % nq
        qi = qt[i_b, i_n].astype(jnp.float32)
        ki, vi = kt[i_b, i_n // rep].astype(jnp.float32), vt[i_b, i_n // rep].astype(jnp.float32)
        s = (qi @ ki.T) * scale
        if bias is not None:
            s = s + pick(bias, i_b, i_n).astype(jnp.float32)
        if mask is not None:
            s = jnp.where(pick(mask, i_b, i_n), s, jnp.finfo(jnp.float32).min)
        p = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
        return ((p @ vi) / jnp.sum(p, axis=-1, keepdims=True)).astype(q.dtype)

    out = jax.lax.map(one, jnp.arange(b * nq))  # [B * N, Tq, H]
    return jnp.swapaxes(out.reshape(b, nq, tq, h), 1, 2)


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
    if impl == "cpu":
        if q.dtype == jnp.float16:
            # XLA:CPU cannot lower jax.nn.dot_product_attention's F16 x F16 -> F32 dot
            return _reference(q, k, v, mask, bias, scale)
        if q.shape[1] >= CPU_MIN_QUERIES:
            return _per_head(q, k, v, mask, bias, scale)
        impl = "xla"
    if impl == "cudnn" and (q.dtype not in (jnp.bfloat16, jnp.float16)):
        impl = "xla"  # cuDNN flash attention supports half precision only
    # jax's fused path asserts the mask has four dims.
    if mask is not None:
        mask = jnp.broadcast_to(mask, mask.shape[:0] + (1,) * (4 - mask.ndim) + mask.shape)
    if bias is not None:
        bias = jnp.broadcast_to(bias, (1,) * (4 - bias.ndim) + bias.shape).astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation=impl)
