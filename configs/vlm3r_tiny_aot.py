"""A tiny VLM-3R for the AOT compile tests and ``bench/accelerator.sh --smoke``: the 7B recipe
(configs/vlm3r_7b.py: LoRA LLM, trainable fusion + projector, offline CUT3R tokens, gathered
answer logits) with configs/vlm3r_tiny.py's sizes; compiles in seconds."""

from __future__ import annotations

import ml_collections

from configs import vlm3r_7b, vlm3r_tiny
from configs.common import dtype_config


def get_config() -> ml_collections.ConfigDict:
    c = vlm3r_7b.get_config()
    c.model = vlm3r_tiny.model_config()
    c.model.builder = "vlm3r"
    c.model.lora.update(dict(enabled=True, rank=4, alpha=8.0))
    c.dtypes = dtype_config(accelerator=False)
    c.data.num_frames = 2
    c.data.siglip_size = c.model.vision.image_size
    c.train.grad_accum_steps = 2
    c.train.max_label_tokens = 8
    c.aot = ml_collections.ConfigDict(dict(vocab_size=96, seq_len=56, geometry="cache"))
    return c
