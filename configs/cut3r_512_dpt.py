"""CUT3R with the released ``cut3r_512_dpt_4_64.pth`` shapes, plus the offline feature-cache
(``launch.extract_geometry``) settings VLM-3R uses.

Shapes are those of the reference training config ``config/dpt_512_vary_4_64.yaml`` (CUT3R commit
8bc15dc): ``ARCroco3DStereoConfig(freeze='encoder', state_size=768, state_pe='2d', pos_embed='RoPE100',
rgb_head=True, pose_head=True, patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), head_type='dpt',
output_mode='pts3d+pose', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), pose_mode=('exp', -inf, inf),
enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12,
landscape_only=False)``; arguments it does not name take the constructor defaults (local_mem_size=256,
state_dec_num_heads=16, ray_enc_depth=2). The DPT sizes are the hard-coded 256 / 128 / [96, 192, 384, 768].
When a checkpoint is loaded, its own constructor string and tensor shapes win over these values.
"""

from __future__ import annotations

import ml_collections

from configs.common import dtype_config, mesh_config
from vlm3r_jax.models.cut3r.config import Cut3rConfig


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        dict(
            patch_size=16,
            enc_embed_dim=1024,
            enc_depth=24,
            enc_num_heads=16,
            dec_embed_dim=768,
            dec_depth=12,
            dec_num_heads=12,
            state_size=768,
            state_pe="2d",
            state_dec_num_heads=16,
            local_mem_size=256,
            ray_enc_depth=2,
            pos_embed="RoPE100",
            rope_fp16_rounding=True,
            rgb_head=True,
            pose_head=True,
            dpt_feature_dim=256,
            dpt_last_dim=128,
            dpt_layer_dims=(96, 192, 384, 768),
            img_size=(512, 512),
        )
    )
    # The released checkpoint (VLM-3R expects it at CUT3R/src/cut3r_512_dpt_4_64.pth).
    c.checkpoint = "checkpoints/cut3r_512_dpt_4_64.pth"
    c.dtype = dtype_config()
    c.mesh = mesh_config()
    # Offline cache, as VLM-3R's scripts/extract_spatial_features.py: 32 uniformly sampled frames,
    # SigLIP squash to 384 + [-1, 1] normalisation, bilinear resize to 432.
    c.extract = ml_collections.ConfigDict(
        dict(
            num_frames=32,
            siglip_size=384,
            cut3r_size=(432, 432),
            format="safetensors",  # or "npz"
            out_dtype="float16",  # the official cache is fp16
            select="all",  # camera + patch tokens ([F, 730, D]); the cache stores both parts
            video_exts=(".mp4", ".avi", ".mov", ".mkv", ".webm"),
            frames_dir_fps=2.0,  # as the training pipeline's PipelineConfig.frames_dir_fps
        )
    )
    return c


def cut3r_config(c: ml_collections.ConfigDict):
    """The :class:`Cut3rConfig` described by ``c.model`` (and ``c.dtype.compute_dtype``)."""

    kw = dict(c.model)
    kw["dpt_layer_dims"] = tuple(kw["dpt_layer_dims"])
    kw["img_size"] = tuple(kw["img_size"])
    return Cut3rConfig(**kw, dtype=c.dtype.compute_dtype, param_dtype=c.dtype.param_dtype)
