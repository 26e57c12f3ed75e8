"""A tiny Qwen2 + LoRA for the AOT compile test (seconds to compile; same code path as 7B)."""

from __future__ import annotations

import ml_collections

from configs.qwen2_7b_lora_aot import get_config as get_7b_config


def get_config() -> ml_collections.ConfigDict:
    c = get_7b_config()
    c.model.update(dict(vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        intermediate_size=64, param_dtype="float32", dtype="float32"))
    c.lora.update(dict(rank=4, alpha=8.0))
    c.data.update(dict(global_batch=0, seq_len=16))
    c.train.grad_accum_steps = 2
    c.mesh.shape = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    return c
