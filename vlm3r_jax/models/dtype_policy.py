"""The one dtype policy (``cfg.dtypes``): what each parameter is stored in and what the towers
compute in.

| what | dtype | config key |
|---|---|---|
| compute (matmuls, activations) | bfloat16 on accelerators, float32 on CPU | ``compute_dtype`` |
| frozen weights (base LLM, SigLIP, CUT3R) | bfloat16 on accelerators, float32 on CPU | ``frozen_dtype`` |
| trainable weights (LoRA, fusion, projector) and so their Adam state | float32 | ``param_dtype`` |
| norm statistics, softmax, logits, loss | float32 | fixed in the layers and the loss |

Models are built with ``param_dtype`` everywhere, then :func:`cast_params` stores what does not
train in ``frozen_dtype``; on an abstract state (``nnx.eval_shape``) this only changes the
dtypes, so a checkpoint loader streams each frozen tensor straight into bfloat16.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

DtypeOf = Callable[[tuple, nnx.Variable], Any]


@dataclasses.dataclass(frozen=True)
class DtypePolicy:
    compute: str = "float32"
    frozen: str = "float32"
    trainable: str = "float32"

    @classmethod
    def from_config(cls, c: Any) -> DtypePolicy:
        """``cfg.dtypes`` (compute_dtype, param_dtype, frozen_dtype; a missing frozen_dtype
        means param_dtype) -> the policy."""
        if c is None:
            return cls()
        trainable = c.get("param_dtype", "float32")
        pol = cls(compute=c.get("compute_dtype", "float32"), frozen=c.get("frozen_dtype", trainable),
                  trainable=trainable)
        for name in ("compute", "frozen", "trainable"):
            try:
                jnp.dtype(getattr(pol, name))
            except TypeError as e:
                raise ValueError(f"config.dtypes: {getattr(pol, name)!r} is not a dtype name "
                                 "(use float32 or bfloat16)") from e
        return pol

    def dtype_of(self, is_trainable: Callable[[tuple, Any], bool]) -> DtypeOf:
        """A per-parameter rule for :func:`cast_params` from an NNX filter of what trains."""
        trainable, frozen = jnp.dtype(self.trainable), jnp.dtype(self.frozen)
        return lambda path, var: trainable if is_trainable(path, var) else frozen


def _cast(x: Any, dtype: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
    return x.astype(dtype)


def cast_params(state: nnx.State, dtype_of: DtypeOf) -> nnx.State:
    """``state`` (concrete or abstract) with every floating-point ``nnx.Param`` in the dtype
    ``dtype_of(path, var)`` names (None keeps it); other variables pass through."""
    flat = []
    for path, var in nnx.to_flat_state(state):
        if isinstance(var, nnx.Param) and jnp.issubdtype(var.dtype, jnp.floating):
            dt = dtype_of(path, var)
            if dt is not None and jnp.dtype(dt) != var.dtype:
                var = var.replace(_cast(var.get_value(), jnp.dtype(dt)))
        flat.append((path, var))
    return nnx.from_flat_state(flat)


def apply_to_module(model: nnx.Module, dtype_of: DtypeOf) -> nnx.Module:
    """:func:`cast_params` on a module (under ``nnx.eval_shape`` too); returns the new module."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, cast_params(state, dtype_of))
