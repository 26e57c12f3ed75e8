"""Small random VLM-3R models for inference tests (host-initialised: a few seconds, no training)."""

from __future__ import annotations

import os

import numpy as np

from configs import vlm3r_tiny
from data_pipeline.tokenizer import QwenTokenizer
from data_pipeline.tokenizer_build import build_tokenizer

TEXTS = [
    "How many chairs are in the room? Answer with a single number.",
    "What is the distance between the table and the sofa in meters?",
    "Which object is closest to the door: A. chair B. lamp C. bed D. desk",
    "These are frames of a video. The camera moves forward and turns left.",
] * 20


def small_model_config(**llm):
    """vlm3r_tiny's structure with smaller dims: SigLIP 32x32 / patch 8 (16 patches -> 2x2 pooled),
    CUT3R at 32x32 / patch 16, a 2-layer Qwen2."""
    m = vlm3r_tiny.model_config()
    m.llm.update(dict(hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=80), **llm)
    m.vision.update(dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2))
    m.geometry.update(dict(enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=24, dec_depth=2,
                           dec_num_heads=2, state_size=8, local_mem_size=4, dpt_feature_dim=8, dpt_last_dim=8,
                           dpt_layer_dims=(8, 8, 16, 16)))
    m.geometry_image_size = (32, 32)
    m.fusion.num_heads = 2
    m.model_max_length = 512
    return m


def tokenizer(tmp: str) -> QwenTokenizer:
    d = os.path.join(tmp, "tok")
    if not os.path.exists(os.path.join(d, "tokenizer.json")):
        build_tokenizer(TEXTS, d, vocab_size=300)
    return QwenTokenizer.from_dir(d)


def small_model(tmp: str, seed: int = 0, num_frames: int = 4, lora_rank: int = 0, **llm):
    """A VLM3RModel with decisive (large) token embeddings so greedy decoding has no near-ties.
    ``lora_rank`` > 0 attaches LLM LoRA adapters, which the release-layout export needs."""
    import jax.numpy as jnp

    from vlm3r_jax.infer.vlm3r_model import VLM3RModel
    from vlm3r_jax.train.vlm3r_task import vlm3r_config

    tok = tokenizer(tmp)
    mcfg = small_model_config(**llm)
    if lora_rank:
        mcfg.lora.update(enabled=True, rank=lora_rank)
    cfg = vlm3r_config(mcfg, tok)
    model = VLM3RModel.from_config(cfg, tok, seed=seed, num_frames=num_frames)
    emb = model.params["llm"]["embed"]["embedding"]
    emb.set_value(jnp.asarray(np.random.default_rng(seed).normal(size=emb.get_value().shape), jnp.float32))
    return model


def video(n: int = 5, size: int = 40, seed: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 3] smooth random frames."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, (n, 5, 5, 3))
    rep = np.kron(base, np.ones((1, size // 5 + 1, size // 5 + 1, 1)))[:, :size, :size]
    return rep.astype(np.uint8)
