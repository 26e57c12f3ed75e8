"""The LLM half of the official VLM-3R golden run (../shared/golden/vlm3r_tiny): the Qwen2 from the
LLaVA-Qwen base dir, LoRA merged by hand, fed the stored spliced ``inputs_embeds``, reproduces
the stored logits and greedy tokens through our sampler's embeddings prefill."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlm3r_jax.convert import hf_qwen2
from vlm3r_jax.infer import sampling
from vlm3r_jax.infer.qwen2_lm import qwen2_step_fns

pytestmark = pytest.mark.torch

_PROJ = {"q_proj": "attn.q", "k_proj": "attn.k", "v_proj": "attn.v", "o_proj": "attn.o",
         "gate_proj": "mlp.gate", "up_proj": "mlp.up", "down_proj": "mlp.down"}


def _merge_lora(state, adapter: dict, scale: float):
    """kernel [in, out] += scale * (B @ A).T for every adapted projection."""
    flat = dict(nnx.to_flat_state(state))
    for key, a in adapter.items():
        if ".lora_A." not in key:
            continue
        b = adapter[key.replace(".lora_A.", ".lora_B.")]
        parts = key.split(".")
        layer = int(parts[parts.index("layers") + 1])
        path = ("layers", *_PROJ[parts[-3]].split("."), "kernel")  # the layer stack's [L, in, out]
        var = flat[path]
        var.set_value(var.get_value().at[layer].add(jnp.asarray(scale * (b @ a).T)))
    return nnx.from_flat_state(flat)


def test_llm_half_of_golden(golden_dir):
    import torch

    root = os.path.join(golden_dir, "vlm3r_tiny")
    base = os.path.join(root, "base_llava_video_qwen2")
    if not os.path.isdir(base):
        pytest.skip("vlm3r_tiny golden set absent")
    outputs = np.load(os.path.join(root, "outputs.npz"))
    vocab = outputs["logits"].shape[-1]  # 293 = len(tokenizer), after resize_token_embeddings
    cfg, graphdef, state = hf_qwen2.load_qwen2(
        base, ignore=hf_qwen2.LLAVA_QWEN_IGNORE, vocab_size=vocab, truncate_vocab=True, attention_impl="xla"
    )
    adapter = torch.load(os.path.join(root, "vlm3r_lora", "adapter_model.bin"), map_location="cpu", weights_only=True)
    adapter = {k: v.float().numpy() for k, v in adapter.items()}
    state = _merge_lora(state, adapter, scale=8 / 4)  # lora_alpha / r from adapter_config.json

    embeds = jnp.asarray(outputs["inputs_embeds"])
    model = nnx.merge(graphdef, state)
    logits = np.asarray(jax.jit(lambda m, e: m(inputs_embeds=e)[0])(model, embeds))
    ref = outputs["logits"]
    err = np.abs(logits - ref).max()
    print(f"golden logits max abs err {err:.2e}")
    assert err <= 5e-5  # measured 8e-6; the golden README suggests 2e-4 for the whole VLM

    step_fn, embed_fn = qwen2_step_fns(graphdef)
    n = len(outputs["generated_ids"])
    stop, pad = sampling.stop_ids_array([292, 290])  # <|im_end|>, <|endoftext|>
    cache = jax.jit(lambda m: m.init_cache(1, embeds.shape[1] + n))(model)
    out = sampling.generate(
        step_fn, embed_fn, state, cache, embeds, jnp.ones(embeds.shape[:2], jnp.int32), jax.random.key(0),
        stop, pad, config=sampling.SamplingConfig(max_new_tokens=n),
    )
    np.testing.assert_array_equal(np.asarray(out.tokens[0]), outputs["generated_ids"])
