"""LayerNorm and RMSNorm with explicit eps and float32 statistics."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis; ``scale``/``bias`` are PyTorch's ``weight``/``bias``."""

    def __init__(
        self,
        dim: int,
        *,
        eps: float = 1e-5,
        use_bias: bool = True,
        use_scale: bool = True,
        axis_name: str | None = "norm",
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        del rngs
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=(axis_name,)) if use_scale else None
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), logical_axes=(axis_name,)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., D] -> [..., D] in x's dtype (statistics in float32)."""
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        if self.scale is not None:
            y = y * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


class RMSNorm(nnx.Module):
    """Qwen2/Llama RMSNorm: normalise in float32, cast back, then multiply by the weight."""

    def __init__(
        self,
        dim: int,
        *,
        eps: float = 1e-6,
        axis_name: str | None = "norm",
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        del rngs
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=(axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., D] -> [..., D]."""
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * y.astype(x.dtype)
