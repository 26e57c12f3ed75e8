"""Rematerialization policies by name, for a per-layer function inside a layer scan.

| name | saved for the backward pass | recomputed |
|---|---|---|
| ``none`` | everything (no ``jax.checkpoint``) | nothing |
| ``full`` | only the layer's inputs | the whole layer |
| ``dots_saveable`` | every matmul output | element-wise ops (norms, activations, softmax) |
| ``dots_with_no_batch_dims_saveable`` | matmuls without batch dims (the projections) | attention score/value products and element-wise ops |
| ``offload`` | as the previous row, but kept in pinned host memory | as the previous row; TPU/GPU only |

The names follow MaxText's ``remat_policy``. Inside ``lax.scan``/``nnx.scan`` pass
``prevent_cse=False``: the scan already stops XLA from merging the recomputation into the
forward pass, and the extra barriers only cost speed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from vlm3r_jax.layers.platform import current_platform

REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable", "offload")


def check_policy(name: str) -> str:
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {name!r}; choose one of {', '.join(REMAT_POLICIES)}")
    return name


def checkpoint_policy(name: str) -> Callable[..., Any] | None:
    """The ``jax.checkpoint`` policy for ``name`` (None for ``none``: do not checkpoint at all).
    ``offload`` is refused when compiling for CPU, which has no separate host memory space."""
    cp = jax.checkpoint_policies
    if check_policy(name) == "offload":
        platform = current_platform()
        if platform == "cpu":
            raise ValueError(
                "remat policy 'offload' moves activations to pinned host memory, which only TPU and GPU have; "
                f"on CPU choose one of {', '.join(p for p in REMAT_POLICIES if p != 'offload')}")
        return cp.offload_dot_with_no_batch_dims(offload_src="device", offload_dst="pinned_host")
    return {
        "none": None,
        "full": cp.nothing_saveable,
        "dots_saveable": cp.dots_saveable,
        "dots_with_no_batch_dims_saveable": cp.dots_with_no_batch_dims_saveable,
    }[name]


def remat(fn: Callable[..., Any], policy: str, *, prevent_cse: bool = True, graph: bool = False,
          static_argnums: int | tuple[int, ...] = ()) -> Callable[..., Any]:
    """``fn`` under the named policy: ``jax.checkpoint`` for a pure function, ``nnx.remat`` when
    ``graph=True`` (``fn`` takes NNX modules). ``none`` returns ``fn`` unchanged."""
    pol = checkpoint_policy(policy)
    if policy == "none":
        return fn
    lift = nnx.remat if graph else jax.checkpoint
    return lift(fn, policy=pol, prevent_cse=prevent_cse, static_argnums=static_argnums)
