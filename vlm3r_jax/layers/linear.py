"""Dense layer with a logical-axis-annotated kernel and an optional LoRA slot."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[[jax.Array, Sequence[int], Any], jax.Array]

default_kernel_init = nnx.initializers.lecun_normal()


class Linear(nnx.Module):
    """``y = x @ kernel + bias`` with ``kernel`` stored ``[in, out]`` (PyTorch stores ``[out, in]``).

    ``axes`` names the kernel's two dimensions for sharding (e.g. ``("embed", "mlp")``).
    ``lora`` is ``None`` until :mod:`vlm3r_jax.models.lora` attaches adapters; when set it is
    called as ``lora(x)`` and its output is added to the dense output.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        axes: tuple[str | None, str | None] = (None, None),
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = nnx.initializers.zeros_init(),
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype
        self.kernel = nnx.Param(
            kernel_init(rngs.params(), (in_features, out_features), param_dtype), logical_axes=axes
        )
        self.bias = (
            nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype), logical_axes=(axes[1],))
            if use_bias
            else None
        )
        # nnx.data: the slot is pytree data (not static) so an adapter can be attached later.
        self.lora: nnx.Module | None = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., in] -> [..., out]."""
        dtype = self.dtype or x.dtype
        y = jnp.einsum("...i,io->...o", x.astype(dtype), self.kernel[...].astype(dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        if self.lora is not None:
            y = y + self.lora(x).astype(dtype)
        return y
