"""Ahead-of-time compile of the LoRA train step at Qwen2-7B shapes (the VLM-3R LLM):
``python -m launch.aot_compile --config configs/qwen2_7b_lora_aot.py --topology v5p-64``.

Qwen2-7B: 28 layers, hidden 3584, 28 query / 4 KV heads (head_dim 128), FFN 18944, vocab 152064,
untied LM head. Frozen base weights in bfloat16, LoRA adapters (r=128, alpha=256, every
q/k/v/o/gate/up/down Linear, the paper's recipe) in float32 with float32 AdamW state; compute
in bfloat16. One sequence of ``data.seq_len`` tokens per device by default (``data.global_batch``
is filled in from the device count when 0). The full VLM-3R plugs in by registering a builder
(``vlm3r_jax.train.aot.register_model_builder``) and setting ``model.builder``.
"""

from __future__ import annotations

import ml_collections

from configs.common import mesh_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(
        builder="qwen2_lora",
        vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
        intermediate_size=18944, rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_word_embeddings=False,
        param_dtype="bfloat16", dtype="bfloat16", attention_impl="auto",
        remat="dots_with_no_batch_dims_saveable",  # per scanned layer (vlm3r_jax/layers/remat.py)
    ))
    c.lora = ml_collections.ConfigDict(dict(
        rank=128, alpha=256.0, dropout=0.05, targets=(r".*\.(q|k|v|o|gate|up|down)",)))
    c.data = ml_collections.ConfigDict(dict(global_batch=0, seq_len=4096))  # 0 -> one row per device
    c.train = ml_collections.ConfigDict(dict(
        steps=1000, grad_accum_steps=1, trainable=(), train_lora=True, seed=0))
    c.optim = ml_collections.ConfigDict(dict(
        lr=2e-5, warmup_ratio=0.03, weight_decay=0.0, max_grad_norm=1.0))
    c.mesh = mesh_config()
    # FSDP over every device: the 7B frozen base is sharded, not replicated.
    c.mesh.shape = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    return c
