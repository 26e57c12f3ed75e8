"""Qwen2 parity with transformers.Qwen2ForCausalLM (torch CPU float32, eager attention):
logits, greedy generation with left padding, export round trip, bf16/fp16/sharded checkpoints."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm3r_jax.infer.qwen2_lm import Qwen2LM

pytestmark = pytest.mark.torch

# Several tiny configs: GQA 3:1 untied, MHA tied with 3 layers, MQA with an explicit head_dim that
# differs from hidden/heads and odd sizes everywhere.
CONFIGS = {
    "gqa3_untied": dict(
        vocab_size=97, hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, rope_theta=5000.0, tie_word_embeddings=False, rms_norm_eps=1e-6,
    ),
    "mha_tied": dict(
        vocab_size=131, hidden_size=40, intermediate_size=56, num_hidden_layers=3, num_attention_heads=5,
        num_key_value_heads=5, rope_theta=1_000_000.0, tie_word_embeddings=True, rms_norm_eps=1e-6,
    ),
    "mqa_headdim_odd": dict(
        vocab_size=61, hidden_size=36, intermediate_size=50, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=12, rope_theta=10000.0, tie_word_embeddings=False, rms_norm_eps=1e-5,
    ),
}


def perturb(state, seed: int, scale: float):
    """state + scale * N(0, 1) noise, drawn with numpy (eager jax.random would compile per shape)."""
    rng = np.random.default_rng(seed)
    leaves, tree = jax.tree_util.tree_flatten(state)
    leaves = [jnp.asarray(np.asarray(x) + scale * rng.standard_normal(x.shape).astype(np.float32)) for x in leaves]
    return jax.tree_util.tree_unflatten(tree, leaves)


def _hf_model(name: str, seed: int = 0):
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(**CONFIGS[name], attn_implementation="eager")
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    # HF's init (std 0.02, zero biases, unit norms) gives near-uniform logits; use larger random
    # weights so greedy decoding is decisive and every parameter (biases, norms) matters.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.25)
    return model


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    """(name, HF model, our Qwen2LM loaded from the HF model's save_pretrained dir)."""
    model = _hf_model(request.param)
    d = str(tmp_path_factory.mktemp(request.param))
    model.save_pretrained(d)
    lm = Qwen2LM.from_pretrained(d, dtype="float32", attention_impl="xla")
    return request.param, model, lm, d


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))) / np.max(np.abs(b)))


def _hf_logits(model, ids, mask=None):
    import torch

    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        return model(torch.tensor(ids, dtype=torch.long), **kw).logits.numpy()


def test_config_read(pair):
    name, model, lm, _ = pair
    c = lm.config
    assert c.num_layers == model.config.num_hidden_layers and c.head_dim == model.model.layers[0].self_attn.head_dim
    assert c.tie_word_embeddings == model.config.tie_word_embeddings
    assert c.rope_theta == CONFIGS[name]["rope_theta"]


def _batch(name: str, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """ids [2, 13]: row 0 full, row 1 left padded by 4; the same shape everywhere so the jitted
    logits function compiles once per config."""
    ids = np.random.default_rng(seed).integers(1, CONFIGS[name]["vocab_size"], (2, 13))
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    ids[1, :4] = 0
    return ids, mask


def test_logits_parity(pair):
    """Logits of an unpadded row and a left-padded row (real positions) match transformers."""
    name, model, lm, _ = pair
    ids, mask = _batch(name)
    ref = _hf_logits(model, ids, mask)
    ours = lm.logits(ids, attention_mask=mask)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    real = mask.astype(bool)
    err = _rel(ours[real], ref[real])
    print(f"{name}: logits max rel err {err:.2e}")
    assert err <= 1e-5


def test_greedy_generate_left_padding(pair):
    """Batch of 2 prompts of lengths 6 and 11 (left padded), 20 new tokens, early eos in one row."""
    import torch

    name, model, lm, _ = pair
    vocab = CONFIGS[name]["vocab_size"]
    rng = np.random.default_rng(4)
    ids = rng.integers(0, vocab, (2, 11))
    mask = np.ones_like(ids)
    mask[0, :5] = 0
    ids[0, :5] = 0
    n = 20

    def hf_gen(eos):
        with torch.no_grad():
            out = model.generate(
                torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=n, min_new_tokens=0,
                do_sample=False, eos_token_id=eos, pad_token_id=eos if eos is not None else 0,
            ).numpy()
        if out.shape[1] < ids.shape[1] + n:  # HF stops when every row is done; we always return T + n
            fill = np.full((2, ids.shape[1] + n - out.shape[1]), eos)
            out = np.concatenate([out, fill], axis=1)
        return out

    free = hf_gen(None)
    ours_free = lm.generate(ids, max_new_tokens=n, attention_mask=mask, eos_token_id=[])
    np.testing.assert_array_equal(ours_free, free)
    # an eos that row 0 produces part-way, so that row stops early and is padded
    eos = int(free[0, ids.shape[1] + 7])
    ref = hf_gen(eos)
    ours = lm.generate(ids, max_new_tokens=n, attention_mask=mask, eos_token_id=eos)
    assert ours.shape == (2, ids.shape[1] + n)
    np.testing.assert_array_equal(ours, ref)
    first = list(ours[0, ids.shape[1]:]).index(eos)
    assert np.all(ours[0, ids.shape[1] + first:] == eos)


@pytest.mark.parametrize("penalty", [1.7, 0.6])
def test_repetition_penalty_matches_transformers(pair, penalty):
    """Greedy with a repetition penalty (prompt tokens count, as in transformers), left padding."""
    import torch

    name, model, lm, _ = pair
    vocab = CONFIGS[name]["vocab_size"]
    ids = np.random.default_rng(7).integers(0, vocab, (2, 9))
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    ids[1, :3] = 0
    n = 12
    with torch.no_grad():
        ref = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=n,
                             min_new_tokens=n, do_sample=False, repetition_penalty=penalty, eos_token_id=None,
                             pad_token_id=0).numpy()
    ours = lm.generate(ids, max_new_tokens=n, attention_mask=mask, eos_token_id=[], repetition_penalty=penalty)
    np.testing.assert_array_equal(ours, ref)
    plain = lm.generate(ids, max_new_tokens=n, attention_mask=mask, eos_token_id=[])
    assert not np.array_equal(plain, ours), "the penalty should change this greedy continuation"


def test_export_roundtrip(pair, tmp_path):
    """Our params -> HF safetensors dir -> transformers loads it -> same logits."""
    import torch
    import transformers

    name, _, lm, _ = pair
    # perturb our params so the exported weights are not the ones we loaded
    ours = Qwen2LM(lm.config, lm.graphdef, perturb(lm.state, 7, 0.05))
    out = str(tmp_path / "export")
    ours.save_pretrained(out)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["model_type"] == "qwen2"
    hf = transformers.Qwen2ForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32).eval()
    ids, mask = _batch(name, seed=5)
    real = mask.astype(bool)
    got = ours.logits(ids, attention_mask=mask)
    assert _rel(got[real], _hf_logits(hf, ids, mask)[real]) <= 1e-5
    # and we load our own export back identically
    again = Qwen2LM.from_pretrained(out, attention_impl="xla")
    np.testing.assert_array_equal(again.logits(ids, attention_mask=mask), got)


@pytest.mark.parametrize("torch_dtype", ["bfloat16", "float16"])
def test_half_precision_and_sharded_checkpoint(torch_dtype, tmp_path):
    """bf16/fp16 safetensors split over several shards with an index load into float32 exactly."""
    import torch
    import transformers

    model = _hf_model("gqa3_untied", seed=1).to(getattr(torch, torch_dtype))
    d = str(tmp_path / torch_dtype)
    model.save_pretrained(d, max_shard_size="20KB")
    assert os.path.exists(os.path.join(d, "model.safetensors.index.json"))
    lm = Qwen2LM.from_pretrained(d, dtype="float32", attention_impl="xla")
    ids, mask = _batch("gqa3_untied", seed=6)
    real = mask.astype(bool)
    # reload in float32 rather than model.float(): .to(bf16) also rounded the rotary buffer
    ref_model = transformers.Qwen2ForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32)
    ref = _hf_logits(ref_model.eval(), ids, mask)
    assert _rel(lm.logits(ids, attention_mask=mask)[real], ref[real]) <= 1e-5
    if torch_dtype == "bfloat16":  # bf16 params and compute: a sanity bound only
        lm16 = Qwen2LM.from_pretrained(d, dtype="bfloat16", attention_impl="xla")
        assert _rel(lm16.logits(ids, attention_mask=mask)[real], ref[real]) <= 0.1
