"""Reference state-dict names of the fusion blocks (:mod:`vlm3r_jax.models.fusion`), both ways:
the loader's name map (:func:`reference_mapping`) and the export (:func:`export_fusion`).

Our parameter paths mirror the reference module tree; the differences are mechanical: Linear
``kernel`` [in, out] <-> torch ``weight`` [out, in], LayerNorm ``scale`` <-> ``weight``, and the
q/k/v projections of an ``nn.MultiheadAttention`` (``cross_attention`` / ``self_attention``), which
torch packs into one ``in_proj_weight`` [3d, d] / ``in_proj_bias`` [3d] (q, k, v row blocks).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from flax import nnx

from vlm3r_jax.convert.assign import Src, flat_arrays, flat_variables

_MHA_IN = re.compile(r"^(.*\b(?:cross_attention|self_attention))\.([qkv])_proj\.(kernel|bias)$")


def reference_name(path: str) -> tuple[str, int | None, bool]:
    """Our param path -> (reference key, q/k/v block index or None, transpose?)."""
    m = _MHA_IN.match(path)
    if m:
        block = "qkv".index(m.group(2))
        return f"{m.group(1)}.in_proj_{'weight' if m.group(3) == 'kernel' else 'bias'}", block, m.group(3) == "kernel"
    if path.endswith(".kernel"):
        return path[: -len(".kernel")] + ".weight", None, True
    if path.endswith(".scale"):
        return path[: -len(".scale")] + ".weight", None, False
    return path, None, False


def export_fusion(module: nnx.Module) -> dict[str, Any]:
    """A fusion block's parameters as the reference state dict (numpy, torch layouts, no prefix)."""
    flat = flat_arrays(nnx.state(module, nnx.Param))
    out: dict[str, Any] = {}
    packed: dict[str, dict[int, Any]] = {}
    for path, arr in flat.items():
        key, block, t = reference_name(path)
        arr = np.swapaxes(arr, 0, 1) if t else arr
        if block is None:
            out[key] = np.ascontiguousarray(arr)
        else:
            packed.setdefault(key, {})[block] = arr
    for key, blocks in packed.items():
        if sorted(blocks) != [0, 1, 2]:
            raise ValueError(f"fusion export: {key} needs q, k and v blocks, got {sorted(blocks)}")
        out[key] = np.ascontiguousarray(np.concatenate([blocks[0], blocks[1], blocks[2]], axis=0))
    return out


def reference_mapping(state: Any, prefix: str = "model.fusion_block.", ours: str = "") -> dict[str, Any]:
    """``{our path (under ours): Src(reference key under prefix, transform)}`` for every parameter
    of a fusion block's (abstract) ``state`` - the loader's name map, any variant."""
    def pick(block: int | None, t: bool):
        def fn(w):
            if block is not None:
                d = w.shape[0] // 3
                w = w[block * d:(block + 1) * d]
            return w.swapaxes(0, 1) if t else w

        return fn

    m = {}
    for path in flat_variables(state):
        key, block, t = reference_name(path)
        m[ours + path] = Src(prefix + key, pick(block, t)) if (t or block is not None) else Src(prefix + key)
    return m
