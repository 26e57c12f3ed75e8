"""The train state: a plain pytree of the trainable params, optimizer state, step and RNG."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar
    params: Any  # nnx.State of the trainable parameters only
    opt_state: Any
    rng: jax.Array  # base key; per-step keys are folded from (rng, step)

    @classmethod
    def create(cls, params: Any, tx: Any, seed: int = 0) -> TrainState:
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                   rng=jax.random.key_data(jax.random.key(seed)))
