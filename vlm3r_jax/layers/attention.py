"""Scaled dot-product attention, one entry point for every platform.

| implementation | where ``auto`` picks it | what runs |
|---|---|---|
| ``splash`` | TPU (also when compiling ahead of time for TPU) | Pallas splash kernel (``layers/splash.py``); causal or bidirectional, padding as segment ids |
| ``cudnn`` | GPU | ``jax.nn.dot_product_attention(implementation="cudnn")`` with ``is_causal`` and sequence lengths; bf16 (float32 inputs are cast to bf16 and back) |
| ``cpu`` | CPU, >= 64 queries | ``lax.map`` over (batch, head) pairs (below) |
| ``xla`` | CPU decode steps, other backends | ``jax.nn.dot_product_attention(implementation="xla")`` with a dense mask |
| ``reference`` | never | plain einsum, for tests |

Why a CPU path: XLA:CPU computes the batched [B, N, Tq, Tk] score tensor and its softmax as
separate passes over memory; for SigLIP's 729-token frames that is 3-4x slower than the matmuls
themselves. One (batch, head) at a time keeps the [Tq, Tk] block in cache and runs at the
matmul rate (about the speed of torch's CPU flash kernel).

Padding without a dense ``[B, 1, T, T]`` mask: ``kv_lengths``/``q_lengths`` (right padding: the
first L tokens of a row are real) or ``segment_ids`` (tokens attend only to tokens with the same
id; any padding side). The fused kernels take them natively; the dense paths turn them into a
mask. A fused kernel that cannot express a request (a general mask, a bias, segment ids on
cuDNN) falls back to the dense path with a logged warning.

Layout everywhere is ``[B, T, N, H]`` (batch, length, heads, head_dim). Grouped-query
attention works when K/V have fewer heads than Q (``N_q % N_kv == 0``).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp

from vlm3r_jax.layers.platform import current_platform, target_platform

__all__ = ["IMPLEMENTATIONS", "dot_product_attention", "resolve_implementation", "target_platform"]

IMPLEMENTATIONS = ("xla", "cudnn", "splash", "cpu", "reference", "auto")
CPU_MIN_QUERIES = 64  # below this (decode steps) the per-head loop's overhead outweighs its gain
SPLASH_MIN_LEN = 128  # auto: shorter sequences are cheaper dense than padded to one kernel block
_AUTO = {"gpu": "cudnn", "cpu": "cpu", "tpu": "splash"}
_WARNED: set[str] = set()
log = logging.getLogger(__name__)


def _warn_once(msg: str) -> None:
    if msg not in _WARNED:
        _WARNED.add(msg)
        log.warning(msg)


def resolve_implementation(impl: str) -> str:
    """``auto`` picks splash on TPU, cuDNN flash attention on GPU, the per-head loop on CPU and
    XLA elsewhere, for the platform being compiled for (see :func:`target_platform`)."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    if impl == "auto":
        return _AUTO.get(current_platform(), "xla")
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


def _segments(segment_ids, q_lengths, kv_lengths, tq: int, tk: int):
    """-> (q ids [B, Tq], kv ids [B, Tk]) or None; lengths become ids 1 (real) / 0 (padding)."""
    if segment_ids is not None:
        if q_lengths is not None or kv_lengths is not None:
            raise ValueError("pass segment_ids or q_lengths/kv_lengths, not both")
        if isinstance(segment_ids, (tuple, list)):
            return tuple(segment_ids)
        if tq != tk:
            raise ValueError(f"one segment_ids array needs as many queries as keys ({tq} vs {tk}); pass (q_ids, kv_ids)")
        return segment_ids, segment_ids
    if q_lengths is None and kv_lengths is None:
        return None
    lengths = kv_lengths if kv_lengths is not None else q_lengths
    b = lengths.shape[0]
    ids = lambda n, ln: (  # noqa: E731
        jnp.ones((b, n), jnp.int32) if ln is None else (jnp.arange(n)[None] < ln[:, None]).astype(jnp.int32))
    return ids(tq, q_lengths), ids(tk, kv_lengths)


def _key_mask(mask) -> jax.Array | None:
    """A mask that only hides keys ([B or 1, 1, 1, Tk]) as ids [B or 1, Tk]; None otherwise."""
    if mask is None or mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2] != 1:
        return None
    return mask[:, 0, 0].astype(jnp.int32)


def _splash(q, k, v, mask, bias, scale, is_causal, segs, auto: bool):
    """The splash call, or None when it cannot express the request (then the dense path runs)."""
    # imported here: the Pallas TPU modules take seconds to import and CPU/GPU runs never need them
    from vlm3r_jax.layers import splash

    b, tq, tk = q.shape[0], q.shape[1], k.shape[1]
    splash.check_length(max(tq, tk))
    if auto and max(tq, tk) < SPLASH_MIN_LEN:
        return None
    keys = _key_mask(mask)
    why = ("a bias" if bias is not None else "a mask other than a key-padding mask" if mask is not None and keys is None
           else "causal attention with unequal query and key lengths" if is_causal and tq != tk
           else "both a key mask and segment ids" if keys is not None and segs is not None else None)
    if why:
        _warn_once(f"splash attention cannot take {why}; using the dense XLA path")
        return None
    if keys is not None:
        segs = jnp.ones((b, tq), jnp.int32), jnp.broadcast_to(keys, (b, tk))
    q_ids, kv_ids = (None, None) if segs is None else segs
    return splash.splash_attention(q, k, v, scale=scale, causal=is_causal, q_segment_ids=q_ids,
                                   kv_segment_ids=kv_ids)


def _cudnn(q, k, v, mask, bias, scale, is_causal, q_lengths, kv_lengths):
    """cuDNN flash attention: causal and right padding in the kernel, half precision only."""
    dtype = q.dtype
    if dtype not in (jnp.bfloat16, jnp.float16):
        _warn_once(f"cuDNN flash attention runs in bfloat16: {dtype} q/k/v are cast to bfloat16 and the "
                   "output back; set attention_impl='xla' for full-precision attention")
        q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    lengths = {}
    if q_lengths is not None or kv_lengths is not None:
        b = q.shape[0]
        full = lambda n, ln: jnp.full((b,), n, jnp.int32) if ln is None else ln.astype(jnp.int32)  # noqa: E731
        lengths = dict(query_seq_lengths=full(q.shape[1], q_lengths),
                       key_value_seq_lengths=full(k.shape[1], kv_lengths))
    return _fused(q, k, v, mask, bias, scale, "cudnn", is_causal=is_causal, **lengths).astype(dtype)


def _fused(q, k, v, mask, bias, scale, impl: str, **kw) -> jax.Array:
    """``jax.nn.dot_product_attention``, whose fused paths assert four-dim masks and biases."""
    if mask is not None:
        mask = jnp.broadcast_to(mask, (1,) * (4 - mask.ndim) + mask.shape)
    if bias is not None:
        bias = jnp.broadcast_to(bias, (1,) * (4 - bias.ndim) + bias.shape).astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation=impl, **kw)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    q_lengths: jax.Array | None = None,
    kv_lengths: jax.Array | None = None,
    segment_ids: jax.Array | tuple[jax.Array, jax.Array] | None = None,
    implementation: str = "xla",
) -> jax.Array:
    """q: [B, Tq, Nq, H], k/v: [B, Tk, Nkv, H], mask: bool broadcastable to [B, N, Tq, Tk]
    (True = attend), bias: float broadcastable to [B, N, Tq, Tk], q_lengths/kv_lengths: int [B]
    (right padding), segment_ids: int [B, T] (self-attention) or (q ids [B, Tq], kv ids [B, Tk])
    -> [B, Tq, Nq, H]. Outputs at padded query positions are unspecified."""
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads {q.shape[2]} must be a multiple of key/value heads {k.shape[2]}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    impl = resolve_implementation(implementation)
    tq, tk = q.shape[1], k.shape[1]
    segs = _segments(segment_ids, q_lengths, kv_lengths, tq, tk)
    if impl == "splash":
        out = _splash(q, k, v, mask, bias, scale, is_causal, segs, implementation == "auto")
        if out is not None:
            return out
        impl = "xla"
    if impl == "cudnn":
        if segment_ids is None and (not is_causal or tq == tk):
            return _cudnn(q, k, v, mask, bias, scale, is_causal, q_lengths, kv_lengths)
        if segment_ids is not None:
            _warn_once("cuDNN flash attention takes lengths, not segment ids; segment ids become a dense mask")
    if segs is not None:
        q_ids, kv_ids = segs
        seg_mask = q_ids[:, None, :, None] == kv_ids[:, None, None, :]
        mask = seg_mask if mask is None else jnp.logical_and(mask, seg_mask)
    if is_causal:
        causal = jnp.tril(jnp.ones((tq, tk), bool), tk - tq)
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
        impl = "xla"  # a dense mask is left: the fused path is not worth a bf16 cast
    return _fused(q, k, v, mask, bias, scale, impl)
