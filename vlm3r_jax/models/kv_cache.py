"""A pure, fixed-size key/value cache for decoder-only transformers (a pytree; jit/while_loop safe).

Layout (all layers in one buffer, scanned together with the layer stack; each step writes only
its new slots, so the buffers update in place inside ``jax.lax.while_loop``)::

    k, v       : [L, B, S, Nkv, H] keys (after RoPE) / values; k[i] is layer i, S = max_len slots
    mask       : bool [B, S]      slot holds a real token (False: padding or not yet written)
    lengths    : int32 [B]        real tokens seen per row = RoPE position of the next token
    end        : int32 []         next slot to write; the same for every row

All rows write at the same slot index; rows with different prompt lengths differ only in which
slots are masked (left padding puts pads at the start, right padding in the middle). Positions
come from ``lengths`` so a row's tokens are numbered 0, 1, 2, ... regardless of padding.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from vlm3r_jax.sharding import constrain

_KV_AXES = ("layers", "batch", "length", "act_heads", None)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    k: jax.Array
    v: jax.Array
    mask: jax.Array
    lengths: jax.Array
    end: jax.Array

    @classmethod
    def init(
        cls, num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype: Any = jnp.float32
    ) -> KVCache:
        """An empty cache: zeros, no valid slots, ``end = 0``."""

        def buf() -> jax.Array:
            return constrain(jnp.zeros((num_layers, batch, max_len, num_kv_heads, head_dim), dtype), _KV_AXES)

        return cls(
            k=buf(),
            v=buf(),
            mask=jnp.zeros((batch, max_len), bool),
            lengths=jnp.zeros((batch,), jnp.int32),
            end=jnp.zeros((), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.mask.shape[1]

    @property
    def batch(self) -> int:
        return self.mask.shape[0]

    @property
    def num_layers(self) -> int:
        return self.k.shape[0]

    def advance(self, k: jax.Array, v: jax.Array, new_mask: jax.Array) -> KVCache:
        """Records that T new tokens (``new_mask`` bool [B, T]) were written at slot ``end`` into
        the buffers ``k``/``v`` [L, B, S, Nkv, H] (already updated by the layer scan)."""
        mask = jax.lax.dynamic_update_slice(self.mask, new_mask.astype(bool), (0, self.end))
        return KVCache(
            k=constrain(k, _KV_AXES),
            v=constrain(v, _KV_AXES),
            mask=mask,
            lengths=self.lengths + jnp.sum(new_mask.astype(jnp.int32), axis=1),
            end=self.end + new_mask.shape[1],
        )
