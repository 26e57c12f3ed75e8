"""HF SigLIP vision weights <-> :class:`vlm3r_jax.models.siglip.SiglipVisionModel` parameters.

Sources it understands (any :class:`~vlm3r_jax.convert.TensorSource`, usually a
:class:`~vlm3r_jax.convert.SafetensorsDir`, sharded or not):

* ``SiglipVisionModel`` / full ``SiglipModel`` checkpoints: keys ``vision_model.*``; the text
  tower (``text_model.*``, ``logit_scale``, ``logit_bias``) is outside the prefix and never read.
* The LLaVA-Video / VLM-3R base checkpoint: ``model.vision_tower.vision_tower.vision_model.*``
  (last layer already deleted there; ``post_layernorm`` present but unused by the reference).

Layers beyond ``cfg.layers``, and ``post_layernorm`` / ``head`` when the config does not use
them, are allowed in the checkpoint and skipped. Everything else must match exactly, or one
:class:`~vlm3r_jax.convert.CheckpointError` lists what is missing/mis-shaped/unexpected.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
from flax import nnx

from vlm3r_jax.convert.assign import (
    Block,
    Layout,
    Src,
    conv_oihw_to_hwio,
    export_tensors,
    identity,
    load_state,
    transpose,
)
from vlm3r_jax.convert.errors import CheckpointError
from vlm3r_jax.convert.sources import PrefixSource, TensorSource
from vlm3r_jax.models.siglip import SiglipVisionConfig, SiglipVisionModel

VISION_PREFIX = "vision_model."
LLAVA_VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
KNOWN_PREFIXES = (VISION_PREFIX, LLAVA_VISION_PREFIX, "vision_tower.vision_model.", "")
_PROBE_KEY = "embeddings.patch_embedding.weight"

_BLOCK: dict[str, tuple[str, Layout]] = {
    "layer_norm1.scale": ("layer_norm1.weight", identity),
    "layer_norm1.bias": ("layer_norm1.bias", identity),
    "layer_norm2.scale": ("layer_norm2.weight", identity),
    "layer_norm2.bias": ("layer_norm2.bias", identity),
    "self_attn.q_proj.kernel": ("self_attn.q_proj.weight", transpose),
    "self_attn.q_proj.bias": ("self_attn.q_proj.bias", identity),
    "self_attn.k_proj.kernel": ("self_attn.k_proj.weight", transpose),
    "self_attn.k_proj.bias": ("self_attn.k_proj.bias", identity),
    "self_attn.v_proj.kernel": ("self_attn.v_proj.weight", transpose),
    "self_attn.v_proj.bias": ("self_attn.v_proj.bias", identity),
    "self_attn.out_proj.kernel": ("self_attn.out_proj.weight", transpose),
    "self_attn.out_proj.bias": ("self_attn.out_proj.bias", identity),
    "mlp.fc1.kernel": ("mlp.fc1.weight", transpose),
    "mlp.fc1.bias": ("mlp.fc1.bias", identity),
    "mlp.fc2.kernel": ("mlp.fc2.weight", transpose),
    "mlp.fc2.bias": ("mlp.fc2.bias", identity),
}


def siglip_mapping(cfg: SiglipVisionConfig, prefix: str = "") -> dict[str, Src]:
    """``{our param path: Src(HF key under prefix, layout)}`` for ``cfg`` (keys relative to
    ``vision_model.`` when ``prefix`` is empty): what the loader reads and the export writes. The
    head's q/k/v are row blocks of ``nn.MultiheadAttention``'s packed ``in_proj``."""
    m: dict[str, Src] = {
        "patch_kernel": Src("embeddings.patch_embedding.weight", conv_oihw_to_hwio),
        "patch_bias": Src("embeddings.patch_embedding.bias"),
        "position_embedding": Src("embeddings.position_embedding.weight"),
    }
    for i in range(cfg.layers):
        for ours, (theirs, op) in _BLOCK.items():
            m[f"layers.{i}.{ours}"] = Src(f"encoder.layers.{i}.{theirs}", op)
    if cfg.use_post_layernorm:
        m["post_layernorm.scale"] = Src("post_layernorm.weight")
        m["post_layernorm.bias"] = Src("post_layernorm.bias")
    if cfg.use_head:
        m["head.probe"] = Src("head.probe")
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            m[f"head.attention.{name}.kernel"] = Src("head.attention.in_proj_weight", Block(i, 3, transpose))
            m[f"head.attention.{name}.bias"] = Src("head.attention.in_proj_bias", Block(i, 3))
        m["head.attention.out_proj.kernel"] = Src("head.attention.out_proj.weight", transpose)
        m["head.attention.out_proj.bias"] = Src("head.attention.out_proj.bias")
        m["head.layernorm.scale"] = Src("head.layernorm.weight")
        m["head.layernorm.bias"] = Src("head.layernorm.bias")
        for fc in ("fc1", "fc2"):
            m[f"head.mlp.{fc}.kernel"] = Src(f"head.mlp.{fc}.weight", transpose)
            m[f"head.mlp.{fc}.bias"] = Src(f"head.mlp.{fc}.bias")
    return {ours: dataclasses.replace(src, keys=prefix + src.keys) for ours, src in m.items()}


def siglip_ignore(cfg: SiglipVisionConfig, keys: Iterable[str]) -> list[str]:
    """Regexes (relative keys) of tensors in a checkpoint with ``keys`` that ``cfg`` does not use:
    layers past ``cfg.layers`` (e.g. the last layer LLaVA drops), and ``post_layernorm`` /
    ``head`` when disabled. Only concrete unused layer indices are listed, so a used layer with
    an unexpected tensor is still reported."""
    pats = [r"embeddings\.position_ids"]  # a non-persistent buffer that some old exports saved
    layer_re = re.compile(r"encoder\.layers\.(\d+)\.")
    unused = sorted({int(mt.group(1)) for k in keys if (mt := layer_re.match(k)) and int(mt.group(1)) >= cfg.layers})
    pats += [rf"encoder\.layers\.{i}\..*" for i in unused]
    if not cfg.use_post_layernorm:
        pats.append(r"post_layernorm\..*")
    if not cfg.use_head:
        pats.append(r"head\..*")
    return pats


def detect_prefix(source: TensorSource) -> str:
    """The key prefix under which ``source`` stores the SigLIP vision tower."""
    keys = set(source.keys())
    for prefix in KNOWN_PREFIXES:
        if prefix + _PROBE_KEY in keys:
            return prefix
    hits = sorted(k for k in keys if k.endswith(_PROBE_KEY))
    if len(hits) == 1:
        return hits[0][: -len(_PROBE_KEY)]
    sample = sorted(keys)[:8]
    raise CheckpointError(
        f"no SigLIP vision tower found in {source.where()}: expected a tensor named "
        f"'<prefix>{_PROBE_KEY}' (prefixes tried: {list(KNOWN_PREFIXES)}; candidates: {hits}); "
        f"first keys are {sample}. Pass prefix= explicitly or check that this is a SigLIP checkpoint."
    )


def load_siglip_state(
    state: Any,
    source: TensorSource,
    cfg: SiglipVisionConfig,
    *,
    prefix: str | None = None,
    dtype: Any = None,
    shardings: Any = None,
) -> Any:
    """Returns ``state`` (abstract or concrete ``nnx.State`` of a :class:`SiglipVisionModel`)
    filled from ``source``. ``prefix`` defaults to auto-detection (:func:`detect_prefix`)."""
    prefix = detect_prefix(source) if prefix is None else prefix
    sub = PrefixSource(source, prefix)
    keys = list(sub.keys())
    if not keys:
        raise CheckpointError(f"no tensors under prefix {prefix!r} in {source.where()}")
    return load_state(
        state,
        sub,
        siglip_mapping(cfg),
        ignore=siglip_ignore(cfg, keys),
        dtype=dtype,
        shardings=shardings,
        what=f"SigLIP vision tower (prefix {prefix!r}, {cfg.layers} layers)",
    )


def load_siglip_into(model: SiglipVisionModel, source: TensorSource, *, prefix: str | None = None) -> None:
    """Loads ``source`` into a concrete ``model`` in place."""
    _, state = nnx.split(model)
    nnx.update(model, load_siglip_state(state, source, model.cfg, prefix=prefix))


def export_siglip_hf(state_or_model: Any, cfg: SiglipVisionConfig, prefix: str = VISION_PREFIX) -> dict[str, np.ndarray]:
    """Our parameters -> ``{HF key: array}`` (torch layouts), e.g. for ``save_safetensors``."""
    state = nnx.state(state_or_model) if isinstance(state_or_model, nnx.Module) else state_or_model
    return export_tensors(state, siglip_mapping(cfg, prefix), what="SigLIP export")
