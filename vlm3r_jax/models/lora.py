"""LoRA adapters on :class:`vlm3r_jax.layers.Linear` kernels.

``attach_lora(model, targets=...)`` puts a :class:`LoRA` module into the ``lora`` slot of every
matching ``Linear``: ``y = x W + b + (alpha / r) * dropout(x) A B`` with ``A`` ``[in, r]`` and
``B`` ``[r, out]`` (PEFT stores ``lora_A`` ``[r, in]`` and ``lora_B`` ``[out, r]``). The adapter
weights are :class:`LoRAParam` variables, a subclass of Flax's ``nnx.LoRAParam`` (itself an
``nnx.Param``), so ``nnx.split(model, nnx.LoRAParam, nnx.Param, ...)`` - or our subclass as the
filter - separates them from the frozen base weights and the optimizer only ever sees the adapters.

``merge_lora`` folds the adapters into the kernels (what PEFT's ``merge_and_unload`` does) and
``unmerge_lora`` takes them out again.
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


class LoRAParam(nnx.LoRAParam):
    """A LoRA adapter weight. It subclasses ``nnx.LoRAParam`` so NNX filters written for Flax's own
    LoRA (``nnx.LoRAParam``, ``nnx.DiffState(0, nnx.LoRAParam)``) select our adapters too."""


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Defaults are the paper's: r=128, alpha=256, dropout 0.05 on every LLM Linear."""

    rank: int = 128
    alpha: float = 256.0
    dropout: float = 0.05
    # regexes matched (fullmatch) against dotted module paths, e.g. "layers.3.attn.q_proj"
    targets: tuple[str, ...] = (r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRA(nnx.Module):
    """The low-rank branch: x [..., in] -> [..., out]."""

    def __init__(self, in_features: int, out_features: int, cfg: LoRAConfig, *,
                 axes: tuple[str | None, str | None] = (None, None), param_dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        self.scale = cfg.scale
        # PEFT's default: A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); B = 0,
        # so a fresh adapter leaves the base model's output unchanged.
        bound = 1.0 / math.sqrt(in_features)
        self.lora_a = LoRAParam(
            jax.random.uniform(rngs.params(), (in_features, cfg.rank), param_dtype, -bound, bound),
            logical_axes=(axes[0], "lora_rank"),
        )
        self.lora_b = LoRAParam(jnp.zeros((cfg.rank, out_features), param_dtype), logical_axes=("lora_rank", axes[1]))
        self.dropout = nnx.Dropout(cfg.dropout, deterministic=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        a, b = self.lora_a[...].astype(x.dtype), self.lora_b[...].astype(x.dtype)
        return (self.dropout(x) @ a @ b) * jnp.asarray(self.scale, x.dtype)

    def delta(self) -> jax.Array:
        """The kernel update ``scale * A B`` [in, out] (float32)."""
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
        axes = lin.kernel.get_metadata().get("logical_axes") or (None, None)
        lin.lora = LoRA(lin.in_features, lin.out_features, cfg, axes=axes, param_dtype=param_dtype, rngs=rngs)
    return [p for p, _ in found]


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
    mods = dict((_path(p), m) for p, m in nnx.iter_modules(model))
    for path, (a, b) in adapters.items():
        lin = mods.get(path)
        if not isinstance(lin, Linear):
            raise KeyError(f"no Linear at {path!r} to unmerge LoRA from")
        axes = lin.kernel.get_metadata().get("logical_axes") or (None, None)
        lin.lora = LoRA(lin.in_features, lin.out_features, cfg, axes=axes, rngs=rngs)
        lin.lora.lora_a.set_value(jnp.asarray(a, lin.lora.lora_a[...].dtype))
        lin.lora.lora_b.set_value(jnp.asarray(b, lin.lora.lora_b[...].dtype))
        k = lin.kernel[...]
        lin.kernel.set_value((k.astype(jnp.float32) - lin.lora.delta()).astype(k.dtype))


def lora_adapters(model: nnx.Module) -> dict[str, tuple[jax.Array, jax.Array]]:
    """{path: (A, B)} of every attached adapter (for export)."""
    return {
        _path(p): (m.lora.lora_a[...], m.lora.lora_b[...])
        for p, m in nnx.iter_modules(model)
        if isinstance(m, Linear) and m.lora is not None
    }
