"""A tiny VLM-3R with the released model's structure (SigLIP -> CUT3R -> cross-attention fusion
-> mlp2x_gelu projector -> 2x2 bilinear pool + newline -> Qwen2) for CPU tests and the demo.

Every field of ``model.*`` maps 1:1 onto the dataclass of that network (unknown keys fail):
``model.llm`` -> Qwen2Config, ``model.vision`` -> SiglipVisionConfig, ``model.geometry`` ->
Cut3rConfig, ``model.projector`` -> ProjectorConfig, ``model.fusion`` -> FusionConfig.
"""

from __future__ import annotations

import ml_collections

from configs.common import dtype_config, mesh_config
from vlm3r_jax.train.init import FROM_SCRATCH_MODULES


def model_config() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.init = "random"  # "random" | a vlm3r_jax checkpoint dir or Hub id | "release" (see release_*)
    m.release_lora = ""  # dir or Hub id (org/name[@revision]), e.g. Journey9ni/vlm-3r-llava-qwen2-lora
    m.release_base = ""  # dir or Hub id, e.g. lmms-lab/LLaVA-NeXT-Video-7B-Qwen2
    m.release_geometry = ""
    m.seed = 0
    # init=random only: > 0 redraws the Linear/Embedding weights of these modules from N(0, range),
    # transformers' from-scratch rule (vlm3r_jax/train/init.py); 0 keeps the layers' own init
    m.initializer_range = 0.0
    m.initializer_modules = FROM_SCRATCH_MODULES
    m.llm = ml_collections.ConfigDict(dict(
        hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=256,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=4096,
        attention_impl="auto"))
    m.vision = ml_collections.ConfigDict(dict(
        image_size=64, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, use_post_layernorm=False, use_head=False))
    m.geometry = ml_collections.ConfigDict(dict(
        patch_size=16, enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=32, dec_depth=2,
        dec_num_heads=2, state_size=16, state_dec_num_heads=2, local_mem_size=8, ray_enc_depth=1,
        dpt_feature_dim=16, dpt_last_dim=8, dpt_layer_dims=(8, 16, 24, 32), rope_fp16_rounding=False))
    m.geometry_image_size = (64, 64)
    m.projector = ml_collections.ConfigDict(dict(
        projector_type="mlp2x_gelu", pool_mode="bilinear", pool_stride=2, patch_merge_type="spatial_unpad",
        newline_position="grid"))
    # fusion_block: one of vlm3r_jax.models.fusion.FUSION_BLOCKS (docs/fusion_variants.md)
    m.fusion = ml_collections.ConfigDict(dict(fusion_block="cross_attention", num_heads=4, dropout=0.1))
    m.spatial_select = "all"
    m.model_max_length = 4096
    m.lora = ml_collections.ConfigDict(dict(enabled=False, rank=8, alpha=16.0, dropout=0.05))
    return m


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = model_config()
    c.mesh = mesh_config()
    c.dtypes = dtype_config(accelerator=False)
    return c
