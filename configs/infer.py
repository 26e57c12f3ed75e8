"""Answering questions about a video (``python -m launch.infer``): sampling and loading settings.

    python -m launch.infer --checkpoint runs/demo/model --video scene.mp4 --question "How many chairs?" \
        --config.max_new_tokens=16 --config.temperature=0.7
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_frames = 0  # frames sampled uniformly from the video; 0 = what the checkpoint was trained with (32 released)
    c.max_new_tokens = 64  # answer length limit in tokens
    c.temperature = 0.0  # 0 = greedy; > 0 samples
    c.top_p = 1.0  # nucleus sampling mass (with temperature > 0)
    c.top_k = 0  # sample among the k best tokens only (0 = all)
    c.repetition_penalty = 1.0  # > 1 discourages repeats (1 = off)
    c.seed = 0  # sampling seed (the output is deterministic given it)
    c.dtype = "float32"  # parameter and compute dtype: float32 | bfloat16
    return c
