"""Random initialisation drawn on the host with numpy, for any NNX module.

Building a model eagerly dispatches one small jax RNG op per parameter (hundreds for VLM-3R,
~30 s for the tiny config on 2 CPU cores) and jitting the constructor is a slow XLA compile.
Tests, notebooks and benchmarks that just need *some* weights use :func:`host_init` instead:
the module is traced abstractly (``nnx.eval_shape``), then every parameter is filled by its name:

    kernel, *_kernel   ~ N(0, 1 / fan_in)   (fan_in = product of all but the last dim, per layer in a stack)
    scale              = 1                  (norms)
    bias, *_bias       = 0
    lora_b             = 0                  (so a fresh adapter leaves the base model unchanged)
    mem, masked_token  ~ N(0, 0.2^2)        (CUT3R's pose memory, as the reference)
    anything else      ~ N(0, 0.02^2)       (embeddings, learned tokens, position tables)

This is a different distribution from each module's own initialiser; use the module
constructor when that matters (e.g. to reproduce a published init).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlm3r_jax.layers.scan import is_stacked

M = TypeVar("M", bound=nnx.Module)


def _draw(name: str, shape: tuple[int, ...], rng: np.random.Generator, lead: int = 0) -> np.ndarray:
    if name == "scale":
        return np.ones(shape)
    if name == "bias" or name.endswith("_bias") or name == "lora_b":
        return np.zeros(shape)
    if name == "kernel" or name.endswith("_kernel") or name == "lora_a":
        return rng.normal(size=shape) / np.sqrt(max(1, int(np.prod(shape[lead:-1]))))
    return rng.normal(size=shape) * (0.2 if name in ("mem", "masked_token") else 0.02)


def fill_random(abstract: M, seed: int = 0) -> M:
    """An abstract module (from ``nnx.eval_shape``) -> the same module with host-drawn values."""
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)

    def draw(path: tuple, v: Any) -> Any:
        if not isinstance(v, nnx.Variable):
            return v
        name = str(getattr(path[-1], "key", path[-1]))
        value = v.get_value()
        if isinstance(v, nnx.RngKey):
            return v.replace(jax.random.key(seed))
        if isinstance(v, nnx.RngCount):
            return v.replace(jnp.zeros(value.shape, value.dtype))
        arr = _draw(name, tuple(value.shape), rng, lead=int(is_stacked(v)))
        return v.replace(jnp.asarray(arr.astype(np.dtype(value.dtype))))

    state = jax.tree_util.tree_map_with_path(draw, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, state)


def host_init(factory: Callable[[], M], seed: int = 0) -> M:
    """``factory`` builds the module (e.g. ``lambda: VLM3R(cfg, rngs=nnx.Rngs(0))``); it only runs
    abstractly. Returns a concrete module with parameters drawn by :func:`fill_random`."""
    return fill_random(nnx.eval_shape(factory), seed)


def fill_abstract_rng(state: nnx.State, seed: int = 0) -> nnx.State:
    """Checkpoint loaders fill only the Params of an ``nnx.eval_shape`` state; this gives the
    rest (RNG keys and counts of dropout layers) concrete values so the model can be placed on
    devices. Inference never draws from them; training re-seeds them from its config."""

    def fill(v: Any) -> Any:
        if not isinstance(v, nnx.Variable) or not isinstance(v.get_value(), jax.ShapeDtypeStruct):
            return v
        value = v.get_value()
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            key = jax.random.key(seed)
            return v.replace(key if value.shape == () else jax.random.split(key, value.shape))
        return v.replace(jnp.zeros(value.shape, value.dtype))

    return jax.tree_util.tree_map(fill, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
