"""Random initialisation without XLA, for tests and benchmarks of models built from scratch.

Eager NNX construction runs (and compiles) every parameter's initialiser as its own XLA program:
hundreds of compiles for VLM-3R, minutes on a busy 2-core machine. Here the structure comes from
``nnx.eval_shape`` (no compute) and the values from numpy. The distribution is a plain one
(fan-in scaled normal kernels, zero biases, unit norm scales, zero ``lora_b`` so adapters start
as a no-op), close to but not identical with each module's own initialiser.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_ZERO = ("bias", "patch_bias", "lora_b")
_FAN_IN = ("kernel", "patch_kernel", "lora_a")


def numpy_init(make_model: Callable[[], nnx.Module], seed: int = 0,
               dtype: str | None = None) -> tuple[nnx.GraphDef, nnx.State]:
    """``make_model`` (e.g. ``lambda: VLM3R(cfg, rngs=nnx.Rngs(0))``) -> (graphdef, state) with
    random values; ``nnx.merge(graphdef, state)`` gives the model. ``dtype`` overrides every
    floating parameter's dtype (default: the dtype the module declares)."""
    graphdef, abstract = nnx.split(nnx.eval_shape(make_model))
    rng = np.random.default_rng(seed)
    flat = []
    for i, (path, var) in enumerate(nnx.to_flat_state(abstract)):
        spec = var.get_value()
        name, shape = str(path[-1]), tuple(spec.shape)
        if isinstance(var, nnx.RngKey):
            value = jax.random.key(seed * 100_003 + i)
        elif not jnp.issubdtype(spec.dtype, jnp.floating):
            value = jnp.zeros(shape, spec.dtype)  # RNG counters and other integer state
        else:
            if name == "scale":
                x = np.ones(shape, np.float32)
            elif name in _ZERO:
                x = np.zeros(shape, np.float32)
            elif name in _FAN_IN:
                x = rng.standard_normal(shape, np.float32) / np.float32(np.sqrt(max(np.prod(shape[:-1]), 1)))
            elif name == "embedding":
                x = rng.standard_normal(shape, np.float32)
            else:  # learned tokens, memories, position embeddings
                x = rng.standard_normal(shape, np.float32) * np.float32(0.02)
            value = jnp.asarray(x, dtype or spec.dtype)
        flat.append((path, var.replace(value)))
    return graphdef, nnx.from_flat_state(flat)
