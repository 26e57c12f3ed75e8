"""The ``vlm3r`` AOT builder: the whole VLM-3R train step of the released recipe, abstract weights.

``python -m launch.aot_compile --config configs/vlm3r_7b.py --topology v6e-8`` builds the model
of ``cfg.model`` under ``nnx.eval_shape`` with the run's dtype policy (frozen weights in
``dtypes.frozen_dtype``, trainables in ``dtypes.param_dtype``) and the batch of one micro-step:

| input | shape | dtype |
|---|---|---|
| ``input_ids``, ``labels``, ``attention_mask`` | [B, T] with T = seq_len - V + 1 (one placeholder) | int32 |
| ``frames`` (SigLIP view) | [B, F, S, S, 3] | float32 |
| ``geometry_tokens`` (the offline CUT3R cache; absent with ``aot.geometry="online"``) | [B, F, 1 + N, Dg] | compute |

V = F x tokens per frame (210 at 384^2), so ``aot.seq_len`` is the spliced length the LLM sees.
The report adds the builder, frames, sequence length, attention implementation, remat policy
and the FLOPs of the step by :mod:`vlm3r_jax.train.flops`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vlm3r_jax.layers.attention import resolve_implementation
from vlm3r_jax.models.dtype_policy import DtypePolicy, apply_to_module
from vlm3r_jax.models.vlm3r import VLM3R
from vlm3r_jax.train.aot import ModelSpec, register_model_builder
from vlm3r_jax.train.vlm3r_task import param_dtypes, step_flops, vlm3r_config, vlm3r_loss

GEOMETRY_MODES = ("cache", "online")


def _aot_section(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    a = cfg.get("aot") or ml_collections.ConfigDict()
    mode = a.get("geometry", "cache")
    if mode not in GEOMETRY_MODES:
        raise ValueError(f"aot.geometry={mode!r}; choose one of {', '.join(GEOMETRY_MODES)}")
    return a


@register_model_builder("vlm3r")
def build_vlm3r(cfg: ml_collections.ConfigDict) -> ModelSpec:
    """``cfg.model`` as in configs/vlm3r_7b.py; ``cfg.aot``: vocab_size, seq_len, geometry
    (cache | online); ``cfg.data``: global_batch, num_frames; ``cfg.train``: trainable,
    max_label_tokens. Rematerialization is per tower: ``model.llm.remat``, ``model.vision.remat``,
    ``model.geometry.remat`` (checked by each tower's config)."""
    a = _aot_section(cfg)
    pol = DtypePolicy.from_config(cfg.get("dtypes"))
    vcfg = vlm3r_config(cfg.model, None, dtype=pol.compute, vocab_size=int(a.get("vocab_size", 152064)))
    online = a.get("geometry", "cache") == "online"
    if vcfg.geometry is None and online:
        raise ValueError("aot.geometry=online needs a model.geometry (CUT3R) section")
    frames, size = int(cfg.data.num_frames), int(vcfg.vision.image_size)
    seq_len = int(a.get("seq_len", 7168))
    video = vcfg.num_video_tokens(frames)
    text = seq_len - video + 1
    if text < 2:
        raise ValueError(f"aot.seq_len={seq_len} leaves no text: {frames} frames take {video} video tokens; "
                         f"use aot.seq_len >= {video + 1}")
    dtype_of = param_dtypes(cfg)

    def factory() -> nnx.Module:
        return apply_to_module(VLM3R(vcfg, rngs=nnx.Rngs(params=0, dropout=1)), dtype_of)

    b = int(cfg.data.global_batch)
    batch = {k: jax.ShapeDtypeStruct((b, text), jnp.int32) for k in ("input_ids", "labels", "attention_mask")}
    batch["frames"] = jax.ShapeDtypeStruct((b, frames, size, size, 3), jnp.float32)
    if vcfg.geometry is not None and not online:
        gh, gw = vcfg.geometry_image_size
        n = 1 + (gh // vcfg.geometry.patch_size) * (gw // vcfg.geometry.patch_size)
        batch["geometry_tokens"] = jax.ShapeDtypeStruct((b, frames, n, vcfg.geometry.dec_embed_dim),
                                                        jnp.dtype(pol.compute))
    max_labels = int(cfg.train.get("max_label_tokens", 0))

    def loss_fn(model, mb):
        return vlm3r_loss(model, mb, max_labels=max_labels)

    def flops(model: nnx.Module) -> float:
        return b * step_flops(cfg, vcfg, model, seq_len, geometry_online=online)

    extras = {"builder": "vlm3r", "num_frames": frames, "seq_len": seq_len, "text_len": text,
              "video_tokens": video, "geometry": "online" if online else "cache",
              "attention": lambda: resolve_implementation(vcfg.llm.attention_impl),
              "remat": vcfg.llm.remat, "remat_vision": vcfg.vision.remat, "max_label_tokens": max_labels,
              "dtypes": {"compute": pol.compute, "frozen": pol.frozen, "trainable": pol.trainable}}
    return ModelSpec(factory, loss_fn, batch, step_flops=flops, extras=extras)
