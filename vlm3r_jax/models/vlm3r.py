"""VLM-3R: SigLIP + CUT3R -> Spatial-Visual-View Fusion -> LLaVA-Video projector -> Qwen2.

Per video (the frames of one video are one CUT3R recurrence; videos in a batch never share
state, unlike the reference, which needs per-device batch 1 for this)::

    frames [B, F, 384, 384, 3] (SigLIP-normalised, [-1, 1])
      SigLIP (last layer dropped, no post-LN)       -> [B*F, 729, Dv]
      bilinear 384 -> 432, CUT3R recurrence          -> [B, F, 1 + 729, Dg]  (camera token first)
      CrossAttentionFusion (per frame)               -> [B*F, 729, Dv]
      mm_projector (mlp2x_gelu) -> 2x2 bilinear pool -> newline after each row -> [B, F*210, D]
    splice into the embedded prompt at the placeholder (id -200), positions 0..L-1 -> Qwen2.

Module names match the reference's top-level names (``vision_tower``, ``spatial_tower``,
``fusion_block``, ``mm_projector``) so parameter paths read like the checkpoint's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from vlm3r_jax.models.cut3r.config import Cut3rConfig
from vlm3r_jax.models.cut3r.model import Cut3r
from vlm3r_jax.models.fusion import FusionConfig, build_fusion
from vlm3r_jax.models.interpolate import interpolate_bilinear
from vlm3r_jax.models.lora import LoRAConfig, attach_lora
from vlm3r_jax.models.projector import ProjectorConfig, VisionProjector, layout_video_tokens
from vlm3r_jax.models.qwen2 import Qwen2, Qwen2Config
from vlm3r_jax.models.siglip import SiglipVisionConfig, SiglipVisionModel
from vlm3r_jax.models.splice import splice_video
from vlm3r_jax.sharding import constrain

SPATIAL_SELECT = ("all", "all_tokens", "camera_tokens", "patch_tokens")  # also comma-separated lists of these


def spatial_parts(select: str) -> tuple[str, ...]:
    """``spatial_tower_select_feature`` -> the CUT3R token groups the fusion attends to, in order
    ("camera" = the 1 camera token, "patch" = the patch tokens). As the reference: a comma-separated
    list concatenated in the order given, where "all" starts over with (camera, patch)."""
    parts: list[str] = []
    for item in select.split(","):
        item = item.strip()
        if item in ("all", "all_tokens"):
            parts = ["camera", "patch"]
        elif item in ("camera_tokens", "patch_tokens"):
            parts.append(item.split("_")[0])
        else:
            raise ValueError(f"spatial_select {select!r}: {item!r} is not one of {SPATIAL_SELECT} "
                             "(or a comma-separated list of them)")
    return tuple(parts)


_WITH_CAMERA = ("camera", "patch")  # the selection that keeps the camera token first, then the patches

# The paper trains LoRA on every Linear of the LLM (q, k, v, o, gate, up, down).
# the LLM's layers are one stack (vlm3r_jax/layers/scan.py): its module paths carry no layer index
LLM_LORA_TARGETS = (r"llm\.layers\.(attn\.(q|k|v|o)|mlp\.(gate|up|down))",)
# ... plus the fusion block and the projector in full; everything else stays frozen.
DEFAULT_TRAINABLE = (r"fusion_block\..*", r"mm_projector\.linears\..*")


@dataclasses.dataclass(frozen=True)
class VLM3RConfig:
    llm: Qwen2Config
    vision: SiglipVisionConfig
    projector: ProjectorConfig
    fusion: FusionConfig
    geometry: Cut3rConfig | None  # None: no 3D branch (plain LLaVA-Video)
    geometry_image_size: tuple[int, int] = (432, 432)  # hard-coded 432 in the reference
    spatial_select: str = "all"  # which CUT3R tokens the fusion attends to
    video_token_id: int = -200  # IMAGE_TOKEN_INDEX
    model_max_length: int = 32768
    truncation: str = "error"  # or "truncate" (text after the video only)
    lora: LoRAConfig | None = None  # None: no adapters attached at construction

    def __post_init__(self):
        parts = spatial_parts(self.spatial_select)
        if self.projector.mm_hidden_size != self.vision.hidden_size:
            raise ValueError(
                f"projector.mm_hidden_size {self.projector.mm_hidden_size} != SigLIP width {self.vision.hidden_size}"
            )
        if self.projector.hidden_size != self.llm.hidden_size:
            raise ValueError(f"projector.hidden_size {self.projector.hidden_size} != LLM width {self.llm.hidden_size}")
        if self.geometry is not None:
            if self.fusion.d_clip != self.vision.hidden_size or self.fusion.d_spatial != self.geometry.dec_embed_dim:
                raise ValueError(
                    f"fusion dims (d_clip={self.fusion.d_clip}, d_spatial={self.fusion.d_spatial}) must equal the "
                    f"SigLIP width {self.vision.hidden_size} and CUT3R dec_embed_dim {self.geometry.dec_embed_dim}"
                )
            policy = self.fusion.token_policy
            if policy == "all" and parts != _WITH_CAMERA:
                raise ValueError(f"fusion_block {self.fusion.fusion_block!r} fuses camera + patch tokens (the reference "
                                 f"fuses it only with spatial_tower_select_feature='all'), got {self.spatial_select!r}")
            if policy == "patch" and parts not in (_WITH_CAMERA, ("patch",)):
                raise ValueError(f"fusion_block {self.fusion.fusion_block!r} takes the CUT3R patch tokens; "
                                 f"spatial_select={self.spatial_select!r} does not give them")
            if self.fusion.after_projector and self.fusion.d_llm not in (None, self.llm.hidden_size):
                raise ValueError(f"fusion d_llm {self.fusion.d_llm} != LLM width {self.llm.hidden_size}")
        if self.truncation not in ("error", "truncate"):
            raise ValueError(f"truncation must be 'error' or 'truncate', got {self.truncation!r}")

    def replace(self, **changes: Any) -> VLM3RConfig:
        return dataclasses.replace(self, **changes)

    def num_video_tokens(self, num_frames: int) -> int:
        return self.projector.num_video_tokens(num_frames)


class VLM3R(nnx.Module):
    def __init__(self, cfg: VLM3RConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.llm.dtype)
        pdt = jnp.dtype(cfg.llm.param_dtype)
        self.vision_tower = SiglipVisionModel(cfg.vision, dtype=dtype, param_dtype=pdt, rngs=rngs)
        self.spatial_tower = Cut3r(cfg.geometry, rngs=rngs) if cfg.geometry is not None else None
        self.fusion_block = (
            build_fusion(cfg.fusion, d_llm=cfg.llm.hidden_size, param_dtype=pdt, rngs=rngs)
            if cfg.geometry is not None else None
        )
        self.mm_projector = VisionProjector(cfg.projector, dtype=dtype, param_dtype=pdt, rngs=rngs)
        self.llm = Qwen2(cfg.llm, rngs=rngs)
        if cfg.lora is not None:
            attach_lora(self, cfg.lora, rngs=rngs, param_dtype=pdt)

    # --- the video branch -----------------------------------------------------------------------
    def geometry_tokens(self, frames: jax.Array) -> jax.Array:
        """frames [B, F, H, W, 3] (SigLIP view) -> CUT3R tokens [B, F, G, Dg] per ``spatial_select``.

        Each video is its own recurrence (batch axis = videos). No ``stop_gradient``: what trains is
        decided by the trainable set (``vlm3r_jax.train.trainable``); frozen CUT3R params are
        constants of the differentiated function, so autodiff computes nothing for them."""
        x = self.geometry_input(frames)
        tokens = self.spatial_tower.tokens(x)  # [B, F, 1 + N, Dg], camera token first
        return self.select_geometry(tokens)

    def geometry_input(self, frames: jax.Array) -> jax.Array:
        """SigLIP-view frames [..., H, W, 3] -> CUT3R's input (bilinear resize, geometry dtype)."""
        lead = frames.shape[:-3]
        x = interpolate_bilinear(frames.reshape((-1,) + frames.shape[-3:]), self.cfg.geometry_image_size)
        return x.reshape(lead + x.shape[1:]).astype(jnp.dtype(self.cfg.geometry.dtype))

    def select_geometry(self, tokens: jax.Array) -> jax.Array:
        """[..., 1 + N, Dg] (camera token first) -> the tokens ``spatial_select`` feeds the fusion."""
        parts = spatial_parts(self.cfg.spatial_select)
        if parts == _WITH_CAMERA:
            return tokens
        groups = {"camera": tokens[..., :1, :], "patch": tokens[..., 1:, :]}
        return jnp.concatenate([groups[p] for p in parts], axis=-2)

    def visual_features(self, frames: jax.Array) -> jax.Array:
        """frames [B, F, H, W, 3] -> SigLIP patch features [B*F, P, Dv]. Frozen in the paper's
        recipe by leaving it out of the trainable set (a ``stop_gradient`` here would silently
        freeze it also when a config asks to train it, as the from-scratch demo does)."""
        return self.vision_tower.features(rearrange(frames, "b f h w c -> (b f) h w c"))

    def fuse(self, features: jax.Array, geometry: jax.Array) -> jax.Array:
        """features [B*F, P, D] (SigLIP features, or projected ones for the variants that run after
        the projector), geometry [B, F, G, Dg] (per ``spatial_select``) -> fused [B*F, P, D].

        Variants that only take patch tokens (as the reference's ``encode_images`` passes them)
        drop the leading camera token here."""
        geo = rearrange(geometry, "b f g d -> (b f) g d")
        if self.cfg.fusion.token_policy == "patch" and spatial_parts(self.cfg.spatial_select) == _WITH_CAMERA:
            geo = geo[:, 1:]
        return self.fusion_block(features, geo)

    def pooled_frames(self, frames: jax.Array | None, geometry_tokens: jax.Array | None = None,
                      features: jax.Array | None = None) -> jax.Array:
        """frames [B, F, H, W, 3] -> per-frame pooled LLM features [B, F, h, w, D] (before the
        newline layout). Frames are independent here except through CUT3R's recurrence, so a
        streaming caller can compute one frame at a time and lay the stack out later.

        ``geometry_tokens`` [B, F, G, Dg] replaces the CUT3R pass (offline feature cache);
        ``features`` [B*F, P, Dv] replaces the SigLIP pass."""
        b = (frames.shape[0] if frames is not None else geometry_tokens.shape[0])
        x = self.visual_features(frames) if features is None else features
        geo = None
        if self.fusion_block is not None:
            geo = self.geometry_tokens(frames) if geometry_tokens is None else geometry_tokens
            if not self.cfg.fusion.after_projector:
                x = self.fuse(x, geo)
        proj = self.mm_projector.project(x)
        if geo is not None and self.cfg.fusion.after_projector:  # before pooling, as encode_images does
            proj = self.fuse(proj, geo)
        pooled = self.mm_projector.pool(proj)
        return rearrange(pooled, "(b f) h w d -> b f h w d", b=b)

    def layout(self, pooled: jax.Array) -> jax.Array:
        """pooled [B, F, h, w, D] -> the LLM input block of each video [B, V, D] (newlines added)."""
        nl = self.mm_projector.image_newline
        nl = nl[...] if nl is not None else None
        pc = self.cfg.projector
        return jax.vmap(lambda p: layout_video_tokens(p, nl, newline_position=pc.newline_position,
                                                      patch_merge_type=pc.patch_merge_type))(pooled)

    def video_embeds(self, frames: jax.Array | None, geometry_tokens: jax.Array | None = None,
                     features: jax.Array | None = None) -> jax.Array:
        """frames [B, F, H, W, 3] -> the LLM input block of each video [B, V, D]
        (:meth:`pooled_frames`, then :meth:`layout`)."""
        return self.layout(self.pooled_frames(frames, geometry_tokens, features))

    # --- the whole model ------------------------------------------------------------------------
    def embed_prompt(self, input_ids: jax.Array, frames: jax.Array | None, *, attention_mask: jax.Array | None = None,
                     labels: jax.Array | None = None, geometry_tokens: jax.Array | None = None) -> dict[str, jax.Array]:
        """Text embeddings with each row's placeholder replaced by its video (see
        :func:`vlm3r_jax.models.splice.splice_video`). Without frames, the prompt is text only."""
        vt = self.cfg.video_token_id
        is_ph = input_ids == vt
        text = self.llm.embed_tokens(jnp.where(is_ph, 0, input_ids))
        if frames is None and geometry_tokens is None:
            b, t = input_ids.shape
            out = {"inputs_embeds": text, "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))}
            out["attention_mask"] = jnp.ones((b, t), jnp.int32) if attention_mask is None else attention_mask
            if labels is not None:
                out["labels"] = labels
            return out
        return self.embed_with_video(input_ids, self.video_embeds(frames, geometry_tokens),
                                     attention_mask=attention_mask, labels=labels)

    def embed_with_video(self, input_ids: jax.Array, video: jax.Array, *, attention_mask: jax.Array | None = None,
                         labels: jax.Array | None = None) -> dict[str, jax.Array]:
        """input_ids int [B, T] (one placeholder per row) + an already computed video block
        video [B, V, D] -> the spliced batch dict (inputs_embeds [B, T - 1 + V, D], ...)."""
        is_ph = input_ids == self.cfg.video_token_id
        text = self.llm.embed_tokens(jnp.where(is_ph, 0, input_ids))
        return splice_video(text, video, jnp.argmax(is_ph, axis=1), attention_mask, labels)

    def hidden_states(self, input_ids: jax.Array, frames: jax.Array | None = None, *,
                      attention_mask: jax.Array | None = None, labels: jax.Array | None = None,
                      geometry_tokens: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """input_ids int [B, T] (one placeholder per row), frames [B, F, H, W, 3] -> (final-normed
        hidden [B, L, D] over the spliced sequence, the spliced batch dict incl. ``labels``); the
        train loss applies the LM head only where it needs logits."""
        sp = self.embed_prompt(input_ids, frames, attention_mask=attention_mask, labels=labels,
                               geometry_tokens=geometry_tokens)
        mask = None if attention_mask is None else sp["attention_mask"]
        # splice_video keeps rows right-padded, so cuDNN can take lengths instead of a dense mask
        hidden, _ = self.llm.hidden_states(inputs_embeds=sp["inputs_embeds"], positions=sp["positions"],
                                           attention_mask=mask, right_padded=True)
        return hidden, sp

    def __call__(self, input_ids: jax.Array, frames: jax.Array | None = None, *,
                 attention_mask: jax.Array | None = None, labels: jax.Array | None = None,
                 geometry_tokens: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Same inputs as :meth:`hidden_states` -> (logits [B, L, vocab] over the spliced sequence,
        the spliced batch dict incl. ``labels``)."""
        hidden, sp = self.hidden_states(input_ids, frames, attention_mask=attention_mask, labels=labels,
                                        geometry_tokens=geometry_tokens)
        return constrain(self.llm.head(hidden), ("batch", "length", "act_vocab")), sp


_ABSTRACT: dict[VLM3RConfig, VLM3R] = {}


def abstract_vlm3r(cfg: VLM3RConfig) -> VLM3R:
    """``nnx.eval_shape`` of the model, cached per config: tracing the constructor takes seconds
    (most of a checkpoint load) and loaders, tests and notebooks build the same shapes again."""
    if cfg not in _ABSTRACT:
        _ABSTRACT[cfg] = nnx.eval_shape(lambda: VLM3R(cfg, rngs=nnx.Rngs(0)))
    return _ABSTRACT[cfg]
