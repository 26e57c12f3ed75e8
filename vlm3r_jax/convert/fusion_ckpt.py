"""Reference state-dict names of the fusion blocks (:mod:`vlm3r_jax.models.fusion`): one name
map (:func:`reference_mapping`) that the loader reads through and the export
(:func:`export_fusion`) writes through.

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

from vlm3r_jax.convert.assign import (
    Block,
    Layout,
    Src,
    export_tensors,
    identity,
    param_slots,
    transpose,
)

_MHA_IN = re.compile(r"^(.*\b(?:cross_attention|self_attention))\.([qkv])_proj\.(kernel|bias)$")


def reference_name(path: str) -> tuple[str, Layout]:
    """Our param path -> (reference key, layout)."""
    m = _MHA_IN.match(path)
    if m:
        kernel = m.group(3) == "kernel"
        return (f"{m.group(1)}.in_proj_{'weight' if kernel else 'bias'}",
                Block("qkv".index(m.group(2)), 3, transpose if kernel else identity))
    if path.endswith(".kernel"):
        return path[: -len(".kernel")] + ".weight", transpose
    if path.endswith(".scale"):
        return path[: -len(".scale")] + ".weight", identity
    return path, identity


def reference_mapping(state: Any, prefix: str = "model.fusion_block.", ours: str = "") -> dict[str, Src]:
    """``{our path (under ours): Src(reference key under prefix, layout)}`` for every parameter of
    a fusion block's (abstract) ``state``, any variant."""
    out = {}
    for path in param_slots(state):
        key, op = reference_name(path)
        out[ours + path] = Src(prefix + key, op)
    return out


def export_fusion(module: nnx.Module) -> dict[str, np.ndarray]:
    """A fusion block's parameters as the reference state dict (numpy, torch layouts, no prefix)."""
    state = nnx.state(module, nnx.Param)
    return export_tensors(state, reference_mapping(state, prefix=""), what="fusion export")
