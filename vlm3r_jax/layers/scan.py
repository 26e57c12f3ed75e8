"""Layer stacks: L identical modules held as ONE module whose variables carry a leading ``[L]``
axis, run by ``jax.lax.scan`` so XLA compiles one layer body instead of L copies.

| piece | what |
|---|---|
| :func:`stack_modules` | L built modules -> one stacked module (logical axis ``"layers"`` prepended, metadata ``layer_stack=<attribute name>``) |
| :func:`scan_layers` | ``carry, ys = scan(body(layer, carry, x))`` over one stack or a tuple of equally deep stacks, each layer under a remat policy |
| :func:`per_layer_name` | ``("llm", "layers", "attn", "q", "kernel")`` + layer i -> ``"llm.layers.{i}.attn.q.kernel"``: the per-layer names checkpoints use |

Building L modules first and stacking them keeps the random draws of a Python-loop build, so
the same seed gives the same weights. Variables without the leading ``"layers"`` axis (e.g. a
LoRA adapter's dropout RNG) are shared by every layer and carried through the scan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vlm3r_jax.layers.remat import remat

STACK_AXIS = "layers"


def is_stacked(var: Any) -> bool:
    """True for a variable of a layer stack (leading logical axis ``"layers"``)."""
    if not isinstance(var, nnx.Variable):
        return False
    axes = var.get_metadata().get("logical_axes") or ()
    return len(axes) > 0 and axes[0] == STACK_AXIS and "layer_stack" in var.get_metadata()


def stack_modules(modules: Sequence[nnx.Module], name: str) -> nnx.Module:
    """L structurally identical modules -> one module; every variable becomes ``[L, ...]`` with
    logical axes ``("layers", *axes)``. ``name`` is the attribute the stack is stored under (it
    is where :func:`per_layer_name` puts the layer index)."""
    if not modules:
        raise ValueError(f"a layer stack {name!r} needs at least one layer")
    graphdef, _ = nnx.split(modules[0])
    states = [nnx.split(m)[1] for m in modules]

    def stack(*vs: nnx.Variable) -> nnx.Variable:
        axes = vs[0].get_metadata().get("logical_axes") or (None,) * jnp.ndim(vs[0].get_value())
        value = jnp.stack([v.get_value() for v in vs])
        return vs[0].replace(value, logical_axes=(STACK_AXIS, *axes), layer_stack=name)

    stacked = jax.tree_util.tree_map(stack, *states, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, stacked)


def stack_depth(stack: nnx.Module) -> int:
    leaves = [v for v in jax.tree_util.tree_leaves(nnx.state(stack), is_leaf=is_stacked) if is_stacked(v)]
    return int(leaves[0].get_value().shape[0])


def _stacked_filter(path: tuple, value: Any) -> bool:
    return is_stacked(value)


def scan_layers(stacks: nnx.Module | tuple[nnx.Module, ...], body: Callable[..., tuple[Any, Any]], carry: Any,
                xs: Any = None, *, policy: str = "none") -> tuple[Any, Any]:
    """Runs ``body(layer, carry, x) -> (carry, y)`` over the layers of ``stacks`` (a module or a
    tuple of equally deep stacks, handed to ``body`` in the same structure) -> ``(carry, ys)``
    with ``ys`` stacked ``[L, ...]``. ``xs`` (optional, leading ``[L]``) gives each layer its own
    input. Each layer runs under the remat ``policy`` (:mod:`vlm3r_jax.layers.remat`)."""
    multi = isinstance(stacks, tuple)
    modules = stacks if multi else (stacks,)
    parts = [nnx.split(s, _stacked_filter, ...) for s in modules]
    graphdefs = [p[0] for p in parts]
    per_layer = [p[1] for p in parts]

    drew = []  # set while tracing when a layer advanced a shared RNG counter (training dropout)

    def step(c: Any, inp: Any) -> tuple[Any, Any]:
        user, shared = c
        states, x = inp
        before = jax.tree_util.tree_leaves(shared)  # values now: merge shares the Variable objects
        layers = tuple(nnx.merge(g, s, r) for g, s, r in zip(graphdefs, states, shared))
        user, y = body(layers if multi else layers[0], user, x)
        # shared variables (dropout RNG counters) travel in the carry: each layer draws anew
        after = [nnx.split(m, _stacked_filter, ...)[2] for m in layers]
        drew.append(any(a is not b for a, b in zip(jax.tree_util.tree_leaves(after), before)))
        return (user, after), y

    # prevent_cse=False: the scan already keeps XLA from merging recomputation into the forward.
    (carry, shared), ys = jax.lax.scan(remat(step, policy, prevent_cse=False),
                                       (carry, [p[2] for p in parts]), (per_layer, xs))
    if any(drew):  # write back only then: a module built outside this trace may not be mutated
        for m, r in zip(modules, shared):
            nnx.update(m, r)
    return carry, ys


def per_layer_name(path: Sequence[str], var: nnx.Variable, layer: int) -> str:
    """Dotted per-layer name of layer ``layer`` of a stacked variable at ``path``: the index goes
    right after the stack's attribute name (``layers.attn.q.kernel`` -> ``layers.3.attn.q.kernel``)."""
    name = var.get_metadata()["layer_stack"]
    parts = [str(p) for p in path]
    at = parts.index(name) + 1
    return ".".join(parts[:at] + [str(layer)] + parts[at:])
