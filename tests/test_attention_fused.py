"""The fused attention paths on a CPU host: the Pallas splash kernel in interpret mode against the
einsum reference (forward and gradient; causal + padding, GQA/MQA, lengths that are not a block
multiple, under a mesh), the arguments the cuDNN call receives, how Qwen2 hands padding to
them, ``auto`` per target platform, and the one-line errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlm3r_jax import sharding
from vlm3r_jax.layers import attention, splash
from vlm3r_jax.layers.attention import dot_product_attention, resolve_implementation, target_platform
from vlm3r_jax.models.qwen2 import Qwen2, Qwen2Config

CASES = [  # (B, Tq, Tk, Nq, Nkv, H, causal, padding)
    (2, 200, 200, 4, 2, 16, True, "segments"),  # GQA, causal, left/right padding, pads to 256
    (2, 130, 130, 3, 1, 8, True, "lengths"),  # MQA, right padding as lengths
    (2, 70, 150, 2, 2, 8, False, "key_mask"),  # cross attention with a key-padding mask
]


def _qkv(b, tq, tk, nq, nkv, h, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32)
                 for t, n in ((tq, nq), (tk, nkv), (tk, nkv)))


def _padding(kind, b, tq, tk):
    """-> (kwargs for dot_product_attention, bool [B, Tq] of the query rows that are defined)."""
    real = np.ones((b, tq), bool)
    if kind == "segments":  # row 0 left-padded by 5, row 1 right-padded after 150
        seg = np.ones((b, tq), np.int32)
        seg[0, :5] = 0
        seg[1, 150:] = 0
        return {"segment_ids": jnp.asarray(seg)}, seg == 1
    if kind == "lengths":
        lengths = np.array([tq, tq - 40], np.int32)
        real = np.arange(tq)[None] < lengths[:, None]
        return {"q_lengths": jnp.asarray(lengths), "kv_lengths": jnp.asarray(lengths)}, real
    keep = np.ones((b, 1, 1, tk), bool)
    keep[1, ..., 100:] = False
    return {"mask": jnp.asarray(keep)}, real


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"q{c[1]}k{c[2]}n{c[3]}/{c[4]}-{c[7]}")
def test_splash_matches_reference_forward_and_gradient(case):
    b, tq, tk, nq, nkv, h, causal, kind = case
    q, k, v = _qkv(b, tq, tk, nq, nkv, h)
    kw, real = _padding(kind, b, tq, tk)
    w = jnp.asarray(real, jnp.float32)[:, :, None, None]  # padded query rows are unspecified

    def loss(impl):
        def f(q, k, v):
            out = dot_product_attention(q, k, v, is_causal=causal, scale=0.3, implementation=impl, **kw)
            return jnp.sum((out * w) ** 2), out
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))

    (_, got), grads = loss("splash")(q, k, v)
    (_, ref), ref_grads = loss("reference")(q, k, v)
    np.testing.assert_allclose(np.asarray(got * w), np.asarray(ref * w), atol=2e-5, rtol=2e-5)
    for name, g, r in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=5e-5, rtol=5e-5, err_msg=f"d{name}")


def test_splash_under_a_mesh_shards_batch_and_heads():
    """shard_map over data (batch) and tensor (heads, GQA groups kept on one device)."""
    q, k, v = _qkv(4, 136, 136, 4, 2, 8, seed=1)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    fn = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, is_causal=True, implementation="splash"))
    with sharding.use_mesh(mesh):
        got = fn(q, k, v)
    ref = dot_product_attention(q, k, v, is_causal=True, implementation="reference")
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=2e-5, rtol=2e-5)
    with sharding.use_mesh(mesh):
        assert "manual_computation" in fn.lower(q, k, v).as_text()  # the kernel runs per shard
    assert "manual_computation" not in fn.lower(q, k, v).as_text()  # no mesh: one plain call


def test_block_padding():
    assert splash.block_size(729) == (768, 256)
    assert splash.block_size(7168) == (7168, 512)
    assert splash.block_size(16) == (128, 128)


def test_cudnn_call_arguments(monkeypatch):
    """Causal + right padding reach cuDNN as is_causal and lengths (no dense mask), in bf16."""
    seen = {}

    def fake(q, k, v, **kw):
        seen.update(kw, dtype=q.dtype)
        return q

    monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
    q, k, v = _qkv(2, 16, 16, 4, 2, 8)
    lengths = jnp.array([16, 9], jnp.int32)
    out = dot_product_attention(q, k, v, is_causal=True, kv_lengths=lengths, q_lengths=lengths,
                                implementation="cudnn")
    assert out.dtype == jnp.float32 and seen["dtype"] == jnp.bfloat16
    assert seen["implementation"] == "cudnn" and seen["is_causal"] is True
    assert seen["mask"] is None and seen["bias"] is None
    np.testing.assert_array_equal(seen["key_value_seq_lengths"], [16, 9])
    np.testing.assert_array_equal(seen["query_seq_lengths"], [16, 9])


@pytest.mark.parametrize("right_padded", [True, False])
def test_qwen2_hands_padding_to_cudnn_as_lengths(monkeypatch, right_padded):
    calls = []

    def fake(q, k, v, **kw):
        calls.append(kw)
        return q.astype(jnp.bfloat16)

    monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
    cfg = Qwen2Config(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                      intermediate_size=32, attention_impl="cudnn")
    model = nnx.eval_shape(lambda: Qwen2(cfg, rngs=nnx.Rngs(0)))
    ids, mask = jnp.zeros((2, 8), jnp.int32), jnp.ones((2, 8), jnp.int32)
    jax.eval_shape(lambda m: m(ids, attention_mask=mask, right_padded=right_padded), model)
    (kw,) = calls
    if right_padded:
        assert kw["is_causal"] and kw["mask"] is None and kw["key_value_seq_lengths"].shape == (2,)
    else:  # left padding is possible: a dense causal x padding mask
        assert kw["mask"].shape == (2, 1, 8, 8) and "key_value_seq_lengths" not in kw


def test_qwen2_with_splash_matches_reference_on_real_tokens():
    """Left and right padding reach the kernel as segment ids; real positions match."""
    base = dict(vocab_size=40, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48)
    model = Qwen2(Qwen2Config(**base, attention_impl="splash"), rngs=nnx.Rngs(0))
    ref_model = Qwen2(Qwen2Config(**base, attention_impl="reference"), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, 40, (2, 140)))
    mask = np.ones((2, 140), np.int32)
    mask[0, :7] = 0
    mask[1, 120:] = 0
    run = jax.jit(lambda m, i, a: m(i, attention_mask=a)[0])
    got, ref = run(model, ids, jnp.asarray(mask)), run(ref_model, ids, jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got)[mask == 1], np.asarray(ref)[mask == 1], atol=1e-4, rtol=1e-4)


def test_auto_per_target_platform():
    for platform, want in (("tpu", "splash"), ("gpu", "cudnn"), ("cuda", "cudnn"), ("cpu", "cpu"), ("metal", "xla")):
        with target_platform(platform):
            assert resolve_implementation("auto") == want, platform
    # auto on TPU keeps short sequences (CUT3R's few pose tokens) on the dense path
    q, k, v = _qkv(1, 8, 8, 2, 2, 8)
    with target_platform("tpu"):
        hlo = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, implementation="auto")).lower(q, k, v).as_text()
    assert "tpu_custom_call" not in hlo and "pallas" not in hlo.lower()


def test_bad_name_and_too_long_sequence():
    with pytest.raises(ValueError, match="choose one of xla, cudnn, splash, cpu, reference, auto"):
        resolve_implementation("flash")
    t = splash.MAX_LEN + 128
    q = jax.ShapeDtypeStruct((1, t, 1, 8), jnp.bfloat16)
    with pytest.raises(ValueError, match=f"limit of {splash.MAX_LEN} tokens.*'xla'"):
        jax.eval_shape(lambda q: dot_product_attention(q, q, q, is_causal=True, implementation="splash"), q)
    with pytest.raises(ValueError, match="not both"):
        dot_product_attention(*_qkv(1, 4, 4, 1, 1, 8), segment_ids=jnp.ones((1, 4), jnp.int32),
                              kv_lengths=jnp.array([4]), implementation="reference")
    assert attention.IMPLEMENTATIONS[-1] == "auto"


def test_vlm3r_train_loss_hands_padding_to_cudnn_as_lengths(monkeypatch):
    """The train step's loss (the released recipe's, via the AOT builder) reaches cuDNN with causal
    + lengths, like the LLM alone: splice_video keeps rows right-padded."""
    from configs.vlm3r_tiny_aot import get_config
    from vlm3r_jax.train.aot import get_model_builder

    calls = []

    def fake(q, k, v, **kw):
        calls.append(kw)
        return q.astype(jnp.bfloat16)

    monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
    cfg = get_config()
    cfg.model.llm.attention_impl = "cudnn"
    cfg.data.global_batch = 2  # prepare_train_step fills it from the device count
    spec = get_model_builder(cfg.model.builder)(cfg)
    model = nnx.eval_shape(spec.factory)
    jax.eval_shape(spec.loss_fn, model, spec.batch)
    llm = [kw for kw in calls if kw.get("implementation") == "cudnn"]
    assert llm and all(kw["is_causal"] and kw["mask"] is None and kw["key_value_seq_lengths"].ndim == 1
                       for kw in llm)
