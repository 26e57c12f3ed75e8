"""LoRA adapters on :class:`vlm3r_jax.layers.Linear` kernels.

``attach_lora(model, targets=...)`` puts a :class:`LoRA` module into the ``lora`` slot of every
matching ``Linear``: ``y = x W + b + (alpha / r) * dropout(x) A B`` with ``A`` ``[in, r]`` and
``B`` ``[r, out]`` (PEFT stores ``lora_A`` ``[r, in]`` and ``lora_B`` ``[out, r]``). The adapter
weights are :class:`LoRAParam` variables, a subclass of Flax's ``nnx.LoRAParam`` (itself an
``nnx.Param``), so ``nnx.split(model, nnx.LoRAParam, nnx.Param, ...)`` - or our subclass as the
filter - separates them from the frozen base weights and the optimizer only ever sees the adapters.

``merge_lora`` folds the adapters into the kernels (what PEFT's ``merge_and_unload`` does) and
``unmerge_lora`` takes them out again.

A ``Linear`` inside a layer stack (:mod:`vlm3r_jax.layers.scan`, kernel ``[L, in, out]``) gets
stacked adapters (``A`` ``[L, in, r]``, ``B`` ``[L, r, out]``) that the layer scan slices with
the kernel. Targets match the stack's module path (``llm.layers.attn.q``, no layer index);
:func:`lora_adapters` and :func:`unmerge_lora` speak per-layer paths (``llm.layers.3.attn.q``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vlm3r_jax.layers import Linear
from vlm3r_jax.layers.scan import is_stacked, per_layer_name


class LoRAParam(nnx.LoRAParam):
    """A LoRA adapter weight. It subclasses ``nnx.LoRAParam`` so NNX filters written for Flax's own
    LoRA (``nnx.LoRAParam``, ``nnx.DiffState(0, nnx.LoRAParam)``) select our adapters too."""


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Defaults are the paper's: r=128, alpha=256, dropout 0.05 on every LLM Linear."""

    rank: int = 128
    alpha: float = 256.0
    dropout: float = 0.05
    # regexes matched (fullmatch) against dotted module paths, e.g. "layers.attn.q_proj" (a stack)
    targets: tuple[str, ...] = (r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRA(nnx.Module):
    """The low-rank branch: x [..., in] -> [..., out]. ``like`` (a stacked kernel ``[L, in, out]``)
    makes the adapters stacked the same way."""

    def __init__(self, in_features: int, out_features: int, cfg: LoRAConfig, *,
                 axes: tuple[str | None, ...] = (None, None), param_dtype: Any = jnp.float32,
                 rngs: nnx.Rngs, like: nnx.Variable | None = None):
        self.scale = cfg.scale
        lead, meta = (), {}
        if like is not None and is_stacked(like):
            lead, meta = tuple(like.get_value().shape[:1]), {"layer_stack": like.get_metadata()["layer_stack"]}
        *lead_axes, ax_in, ax_out = axes
        # PEFT's default: A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); B = 0,
        # so a fresh adapter leaves the base model's output unchanged.
        bound = 1.0 / math.sqrt(in_features)
        self.lora_a = LoRAParam(
            jax.random.uniform(rngs.params(), (*lead, in_features, cfg.rank), param_dtype, -bound, bound),
            logical_axes=(*lead_axes, ax_in, "lora_rank"), **meta,
        )
        self.lora_b = LoRAParam(jnp.zeros((*lead, cfg.rank, out_features), param_dtype),
                                logical_axes=(*lead_axes, "lora_rank", ax_out), **meta)
        self.dropout = nnx.Dropout(cfg.dropout, deterministic=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        a, b = self.lora_a[...].astype(x.dtype), self.lora_b[...].astype(x.dtype)
        return (self.dropout(x) @ a @ b) * jnp.asarray(self.scale, x.dtype)

    def delta(self) -> jax.Array:
        """The kernel update ``scale * A B`` [(L,) in, out] (float32)."""
        a = self.lora_a[...].astype(jnp.float32)
        return (a @ self.lora_b[...].astype(jnp.float32)) * self.scale


def _path(p: Sequence[Any]) -> str:
    return ".".join(str(x) for x in p)


def find_linears(model: nnx.Module, targets: Sequence[str]) -> list[tuple[str, Linear]]:
    """Dotted paths and modules of every ``Linear`` whose path fullmatches one of ``targets``."""
    pats = [re.compile(t) for t in targets]
    return [
        (_path(p), m)
        for p, m in nnx.iter_modules(model)
        if isinstance(m, Linear) and any(pt.fullmatch(_path(p)) for pt in pats)
    ]


def attach_lora(model: nnx.Module, cfg: LoRAConfig, *, rngs: nnx.Rngs, param_dtype: Any = jnp.float32) -> list[str]:
    """Adds adapters to every target ``Linear`` of ``model`` in place; returns their paths."""
    found = find_linears(model, cfg.targets)
    if not found:
        raise ValueError(f"LoRA targets {cfg.targets} matched no Linear layer of {type(model).__name__}")
    for _, lin in found:
        lin.lora = _new_lora(lin, cfg, rngs, param_dtype)
    return [p for p, _ in found]


def _new_lora(lin: Linear, cfg: LoRAConfig, rngs: nnx.Rngs, param_dtype: Any = jnp.float32) -> LoRA:
    axes = lin.kernel.get_metadata().get("logical_axes") or (None,) * lin.kernel.get_value().ndim
    return LoRA(lin.in_features, lin.out_features, cfg, axes=axes, param_dtype=param_dtype, rngs=rngs, like=lin.kernel)


def _per_layer(path: str, lin: Linear) -> list[tuple[str, int | None]]:
    """Per-layer paths of a Linear (one per layer of a stack) with their layer index."""
    if not is_stacked(lin.kernel):
        return [(path, None)]
    return [(per_layer_name(path.split("."), lin.kernel, i), i) for i in range(lin.kernel.get_value().shape[0])]


def merge_lora(model: nnx.Module, *, remove: bool = True) -> int:
    """Folds every adapter into its kernel (``W += scale * A B``); returns how many were merged.

    With ``remove=False`` the adapters stay attached with ``B`` zeroed, so the model keeps its
    structure (and still computes the merged function)."""
    n = 0
    for _, lin in nnx.iter_modules(model):
        if isinstance(lin, Linear) and lin.lora is not None:
            k = lin.kernel[...]
            lin.kernel.set_value((k.astype(jnp.float32) + lin.lora.delta()).astype(k.dtype))
            if remove:
                lin.lora = None
            else:
                lin.lora.lora_b.set_value(jnp.zeros_like(lin.lora.lora_b[...]))
            n += 1
    return n


def unmerge_lora(model: nnx.Module, adapters: dict[str, tuple[jax.Array, jax.Array]], cfg: LoRAConfig,
                 *, rngs: nnx.Rngs) -> None:
    """Inverse of :func:`merge_lora`: re-attaches ``adapters`` ({path: (A [in,r], B [r,out])}) and
    subtracts their delta from the kernels."""
    slots = {name: (lin, i) for p, lin in nnx.iter_modules(model) if isinstance(lin, Linear)
             for name, i in _per_layer(_path(p), lin)}
    groups: dict[int, tuple[Linear, dict]] = {}
    for path, (a, b) in adapters.items():
        if path not in slots:
            raise KeyError(f"no Linear at {path!r} to unmerge LoRA from")
        lin, i = slots[path]
        groups.setdefault(id(lin), (lin, {}))[1][i] = (a, b)
    for lin, per in groups.values():
        if None in per:
            a, b = per[None]
        else:
            n = lin.kernel.get_value().shape[0]
            if sorted(per) != list(range(n)):
                raise KeyError(f"adapters cover layers {sorted(per)} of a {n}-layer stack; unmerge needs all")
            a, b = (jnp.stack([jnp.asarray(per[i][j]) for i in range(n)]) for j in (0, 1))
        lin.lora = _new_lora(lin, cfg, rngs)
        lin.lora.lora_a.set_value(jnp.asarray(a, lin.lora.lora_a[...].dtype))
        lin.lora.lora_b.set_value(jnp.asarray(b, lin.lora.lora_b[...].dtype))
        k = lin.kernel[...]
        lin.kernel.set_value((k.astype(jnp.float32) - lin.lora.delta()).astype(k.dtype))


def lora_layers(model: nnx.Module) -> list[tuple[str, Linear, int | None]]:
    """``(per-layer path, Linear, layer index or None)`` of every Linear with an adapter."""
    return [(name, m, i) for p, m in nnx.iter_modules(model) if isinstance(m, Linear) and m.lora is not None
            for name, i in _per_layer(_path(p), m)]


def lora_adapters(model: nnx.Module) -> dict[str, tuple[jax.Array, jax.Array]]:
    """{per-layer path: (A [in, r], B [r, out])} of every attached adapter (for export)."""
    out = {}
    for name, m, i in lora_layers(model):
        a, b = m.lora.lora_a[...], m.lora.lora_b[...]
        out[name] = (a, b) if i is None else (a[i], b[i])
    return out
