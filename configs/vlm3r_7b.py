"""The released VLM-3R shapes and the paper's training recipe.

LLM Qwen2-7B (28 layers, 3584, 28/4 heads, FFN 18944, vocab 152064, theta 1e6); SigLIP
so400m-patch14-384 with its last layer dropped (26 of 27); CUT3R 512-dpt (ViT-L encoder
1024/24/16, decoder 768/12/12, 768 state tokens, 256-slot pose memory) at 432x432; cross-attention
fusion (18 heads); mlp2x_gelu projector; 2x2 bilinear pool + newline per row (210 tokens/frame).
Training: LoRA r=128 alpha=256 dropout 0.05 on every LLM Linear + fusion + projector, AdamW lr 2e-5,
3% warmup, cosine, weight decay 0, clip 1.0, global batch 128, 32 frames, bf16 compute.

To start from the released weights: ``--config.model.init=release
--config.model.release_lora=Journey9ni/vlm-3r-llava-qwen2-lora
--config.model.release_base=lmms-lab/LLaVA-NeXT-Video-7B-Qwen2
--config.model.release_geometry=cut3r_512_dpt_4_64.pth`` (dirs or Hub ids; the CUT3R file is local).
"""

from __future__ import annotations

import ml_collections

from configs import demo_tiny, vlm3r_tiny
from configs.common import dtype_config, mesh_config


def model_config() -> ml_collections.ConfigDict:
    """The tiny model's structure (configs/vlm3r_tiny.py) with the released sizes."""
    m = vlm3r_tiny.model_config()
    m.init = "release"
    m.llm.update(dict(
        hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4, intermediate_size=18944,
        max_position_embeddings=32768, attention_impl="auto",
        # per scanned layer, everything recomputed in the backward pass: the whole 7B step at 7168 tokens
        # then takes 58.9% of a v6e chip's HBM (dots_with_no_batch_dims_saveable: 47 GiB, does not fit);
        # docs/launch.md has the table
        remat="full"))
    m.vision.update(dict(
        image_size=384, patch_size=14, hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
        num_attention_heads=16))
    m.vision.num_layers_used = 26
    # CUT3R's reference DPT sizes are Cut3rConfig's defaults; the tiny overrides are dropped.
    m.geometry = ml_collections.ConfigDict(dict(
        patch_size=16, enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12,
        dec_num_heads=12, state_size=768, state_dec_num_heads=16, local_mem_size=256, ray_enc_depth=2,
        rope_fp16_rounding=True))
    m.geometry_image_size = (432, 432)
    m.fusion.num_heads = 18
    m.model_max_length = 32768
    m.lora.update(dict(enabled=True, rank=128, alpha=256.0, dropout=0.05))
    return m


def get_config() -> ml_collections.ConfigDict:
    c = demo_tiny.get_config()
    c.model = model_config()
    c.mesh = mesh_config()
    c.mesh.shape = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    c.dtypes = dtype_config(accelerator=True)
    c.data.num_frames = 32
    c.data.siglip_size = 384
    c.data.length_buckets = (256, 512, 1024)
    c.data.label_policy = "official"  # the released recipe (the demo trains on answers only)
    c.data.questions_per_row = 1
    c.train.steps = 5 * 1600  # 5 epochs of ~205K QA at global batch 128
    c.train.batch_size = 128
    c.train.grad_accum_steps = 16
    c.train.trainable = (r"fusion_block\..*", r"mm_projector\.linears\..*")
    c.train.save_every = 500
    c.train.log_every = 10  # metrics are read back from the device once per window, not every step
    c.train.max_label_tokens = 512  # the loss gathers this many answer positions per row (no [B, L, vocab])
    c.optim.lr = 2e-5
    c.optim.warmup_ratio = 0.03
    # ahead-of-time compile (python -m launch.aot_compile --config configs/vlm3r_7b.py --topology v6e-8):
    # abstract weights, Qwen2-7B's 152064 embedding rows, 32 x 210 video tokens + 449 text tokens per row,
    # CUT3R tokens from the offline cache as the released recipe trains (geometry="online" runs CUT3R)
    c.model.builder = "vlm3r"
    c.aot = ml_collections.ConfigDict(dict(vocab_size=152064, seq_len=7168, geometry="cache"))
    return c
