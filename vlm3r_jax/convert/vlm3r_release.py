"""Name maps for the released VLM-3R checkpoint layout (non_lora_trainables.bin, PEFT adapters).

Keys of ``non_lora_trainables.bin`` are first normalised as the reference loader does: strip a
leading ``base_model.``; if keys then start with ``model.model.``, strip one more ``model.``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from vlm3r_jax.convert.assign import Src, transpose


def strip_non_lora_prefixes(keys: Iterable[str]) -> dict[str, str]:
    """{normalised key: original key}, the reference's two-step prefix stripping."""
    keys = list(keys)
    out = {(k[len("base_model."):] if k.startswith("base_model.") else k): k for k in keys}
    if any(k.startswith("model.model.") for k in out):
        out = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in out.items()}
    return out


def _rows(i: int):
    """Picks block ``i`` of a packed [3d, d] in-projection (q, k, v order) and transposes it."""

    def fn(w: np.ndarray) -> np.ndarray:
        d = w.shape[0] // 3
        return np.swapaxes(w[i * d:(i + 1) * d], -1, -2) if w.ndim == 2 else w[i * d:(i + 1) * d]

    return fn


def fusion_mapping(prefix: str = "model.fusion_block.", ours: str = "") -> dict[str, Src]:
    """Our CrossAttentionFusion param paths (under ``ours``) -> reference keys (under ``prefix``)."""
    m: dict[str, Src] = {}
    for name in ("clip_norm", "spatial_encoder_norm", "out_norm"):
        m[f"{ours}{name}.scale"] = Src(f"{prefix}{name}.weight")
        m[f"{ours}{name}.bias"] = Src(f"{prefix}{name}.bias")
    for name in ("clip_query_proj", "spatial_encoder_key_proj", "spatial_encoder_value_proj", "out_proj"):
        m[f"{ours}{name}.kernel"] = Src(f"{prefix}{name}.weight", transpose)
        m[f"{ours}{name}.bias"] = Src(f"{prefix}{name}.bias")
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        m[f"{ours}cross_attention.{name}.kernel"] = Src(f"{prefix}cross_attention.in_proj_weight", _rows(i))
        m[f"{ours}cross_attention.{name}.bias"] = Src(f"{prefix}cross_attention.in_proj_bias", _rows(i))
    m[f"{ours}cross_attention.out_proj.kernel"] = Src(f"{prefix}cross_attention.out_proj.weight", transpose)
    m[f"{ours}cross_attention.out_proj.bias"] = Src(f"{prefix}cross_attention.out_proj.bias")
    return m
