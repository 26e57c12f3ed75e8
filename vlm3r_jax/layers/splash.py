"""TPU attention through the Pallas splash kernel (``jax.experimental.pallas.ops.tpu.splash_attention``).

The kernel never materialises the ``[heads, Tq, Tk]`` scores: a 7B-shaped layer at 7168 tokens
needs 0.3 GiB for forward + backward instead of 8.1 GiB. What it cannot take directly is
handled here:

| need | how |
|---|---|
| batch | ``vmap`` over B (the kernel is per example) |
| scale | folded into q (the kernel applies none) |
| GQA | ``make_splash_mha`` with fewer K/V heads; ``make_splash_mqa`` when there is one K/V head |
| padding | segment ids ``[B, T]``: tokens attend only to tokens with the same id |
| T not a block multiple | q/k/v padded to the block multiple with segment id -1, result sliced back |
| a mesh is active | ``shard_map`` over batch (and heads when both head counts divide) |

Off TPU the kernel runs in Pallas interpret mode (tests check it against the einsum reference).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from einops import rearrange
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
from jax.sharding import PartitionSpec

from vlm3r_jax import sharding
from vlm3r_jax.layers.platform import target_is

LANE = 128  # the kernel tiles the sequence in multiples of the TPU lane width
BLOCKS = (512, 256, 128)  # preferred block sizes, largest first
MAX_LEN = 131072  # the kernel's block tables live in SMEM and grow as (T / block)^2
PAD_SEGMENT = -1  # the id of the positions added to reach a block multiple


def block_size(t: int) -> tuple[int, int]:
    """Length ``t`` -> (padded length, block): ``t`` rounded up to the lane width, then the largest
    preferred block that divides it (729 SigLIP tokens -> 768 in 256-blocks, 7168 -> 512-blocks)."""
    padded = -(-t // LANE) * LANE
    return padded, next(b for b in BLOCKS if padded % b == 0)


def check_length(t: int) -> None:
    if t > MAX_LEN:
        raise ValueError(
            f"sequence length {t} exceeds the splash kernel's limit of {MAX_LEN} tokens; shorten the sequence "
            "(data.seq_len, frames) or set attention_impl to one of 'xla', 'reference'")


def _kernel(nq: int, nkv: int, tq: int, tk: int, bq: int, bkv: int, causal: bool, interpret: bool):
    """The kernel for one static shape. Built per trace: its block tables become constants of
    that trace (splash caches the numpy work behind them per mask)."""
    one = sm.CausalMask((tq, tk)) if causal else sm.FullMask((tq, tk))
    mask = sm.MultiHeadMask([one] * nq)
    blocks = sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                           block_kv_dkv_compute=bkv, use_fused_bwd_kernel=True)
    make = sk.make_splash_mqa if nkv == 1 else sk.make_splash_mha
    return make(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret)


def _pad(x: jax.Array, t: int, axis: int, value: int | float = 0) -> jax.Array:
    width = [(0, 0)] * x.ndim
    width[axis] = (0, t - x.shape[axis])
    return jnp.pad(x, width, constant_values=value)


def _local(q, k, v, q_seg, kv_seg, *, causal: bool, interpret: bool):
    """The unsharded call: q [B, Tq, Nq, H], k/v [B, Tk, Nkv, H] (q already scaled), segment ids
    int32 [B, Tq] / [B, Tk] -> [B, Tq, Nq, H]."""
    tq, tk, nq, nkv = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    pq, bq = block_size(tq)
    pk, bkv = block_size(tk)
    kernel = _kernel(nq, nkv, pq, pk, bq, bkv, causal, interpret)
    qh = rearrange(_pad(q, pq, 1), "b t n h -> b n t h")
    kh, vh = (rearrange(_pad(x, pk, 1), "b t n h -> b n t h") for x in (k, v))
    if nkv == 1:
        kh, vh = kh[:, 0], vh[:, 0]
    seg = sk.SegmentIds(q=_pad(q_seg, pq, 1, PAD_SEGMENT), kv=_pad(kv_seg, pk, 1, PAD_SEGMENT))
    out = jax.vmap(kernel)(qh, kh, vh, segment_ids=seg)
    return rearrange(out, "b n t h -> b t n h")[:, :tq]


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    scale: float,
    causal: bool,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    interpret: bool | None = None,
) -> jax.Array:
    """q [B, Tq, Nq, H], k/v [B, Tk, Nkv, H], segment ids int [B, Tq] / [B, Tk] (default: one
    segment) -> [B, Tq, Nq, H] in q's dtype. Every query row must see at least one key of its
    segment (true for self-attention). ``interpret`` defaults to "not compiling for TPU"."""
    b, tq, nq, _ = q.shape
    tk, nkv = k.shape[1], k.shape[2]
    check_length(max(tq, tk))
    if causal and tq != tk:
        raise ValueError(f"causal splash attention needs as many queries as keys, got {tq} and {tk}")
    interpret = not target_is("tpu") if interpret is None else interpret
    q_seg = jnp.ones((b, tq), jnp.int32) if q_segment_ids is None else q_segment_ids.astype(jnp.int32)
    kv_seg = jnp.ones((b, tk), jnp.int32) if kv_segment_ids is None else kv_segment_ids.astype(jnp.int32)
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)
    fn = functools.partial(_local, causal=causal, interpret=interpret)
    mesh_rules = sharding.active_mesh()
    if mesh_rules is None:
        return fn(q, k, v, q_seg, kv_seg)
    mesh, rules = mesh_rules
    # a Pallas call is opaque to the SPMD partitioner, so it runs per shard: batch over the data
    # axes, heads over "tensor" only when the K/V heads split the same way as the query heads
    # (a query head must find its K/V head on the same device); the sequence stays whole.
    batch = sharding.logical_to_spec(("batch",), (b,), mesh, rules)[0]
    heads = sharding.logical_to_spec(("act_heads",), (nq,), mesh, rules)[0]
    if heads is not None and sharding.logical_to_spec(("act_heads",), (nkv,), mesh, rules)[0] != heads:
        heads = None
    x_spec, seg_spec = PartitionSpec(batch, None, heads, None), PartitionSpec(batch, None)
    return jax.shard_map(fn, mesh=mesh, in_specs=(x_spec, x_spec, x_spec, seg_spec, seg_spec), out_specs=x_spec,
                         check_vma=False)(q, k, v, q_seg, kv_seg)
