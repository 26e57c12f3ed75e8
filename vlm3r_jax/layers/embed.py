"""Token embedding table, usable as a tied output head."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


class Embed(nnx.Module):
    """``embedding`` is ``[vocab, dim]`` with logical axes ``("vocab", "embed")``."""

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        param_dtype: Any = jnp.float32,
        init_std: float = 0.02,
        rngs: nnx.Rngs,
    ):
        self.num_embeddings = num_embeddings
        self.features = features
        self.embedding = nnx.Param(
            init_std * jax.random.normal(rngs.params(), (num_embeddings, features), param_dtype),
            logical_axes=("vocab", "embed"),
        )

    def __call__(self, ids: jax.Array, dtype: Any = None) -> jax.Array:
        """ids: int [...] -> [..., D]."""
        table = self.embedding[...]
        out = jnp.take(table, ids, axis=0)
        return out.astype(dtype) if dtype is not None else out

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied LM head: x [..., D] -> logits [..., vocab]."""
        return jnp.einsum("...d,vd->...v", x, self.embedding[...].astype(x.dtype))
