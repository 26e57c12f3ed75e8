"""KV-cache decoding and the sampler (no torch): cached steps equal a full recompute, padding on
either side, embeddings input, eos handling, seeded temperature / top-k / top-p sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlm3r_jax.infer import sampling
from vlm3r_jax.infer.qwen2_lm import Qwen2LM, qwen2_step_fns
from vlm3r_jax.models.qwen2 import Qwen2, Qwen2Config

CFG = Qwen2Config(
    vocab_size=67, hidden_size=36, num_layers=2, num_heads=6, num_kv_heads=3, intermediate_size=44,
    rope_theta=500.0, attention_impl="xla",
)


def _randomize(model: Qwen2, seed: int = 0) -> Qwen2:
    """Random non-trivial biases and norm scales (init leaves them 0 / 1)."""
    graphdef, state = nnx.split(model)
    leaves, tree = jax.tree_util.tree_flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(tree, leaves))


@pytest.fixture(scope="module")
def model() -> Qwen2:
    return _randomize(Qwen2(CFG, rngs=nnx.Rngs(0)))


# Eager NNX calls are slow; every forward in these tests goes through one jitted function.
@jax.jit
def _fwd_jit(model, ids, mask, cache):
    return model(ids, attention_mask=mask, cache=cache)


def _fwd(model, ids, mask=None, cache=None):
    return _fwd_jit(model, jnp.asarray(ids), None if mask is None else jnp.asarray(mask), cache)


def _full(model, ids, mask=None):
    return np.asarray(_fwd(model, ids, mask)[0])


@pytest.mark.parametrize("side", ["none", "left", "right"])
def test_cached_decode_equals_full_recompute(model, side):
    """Prefill 7 tokens, then 5 single-token steps; logits equal the uncached forward."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, CFG.vocab_size, (2, 12))
    mask = np.ones_like(ids)
    if side == "left":
        mask[1, :3] = 0
    elif side == "right":
        mask[1, 5:7] = 0  # padding at the end of row 1's prompt, decode continues after it
    ref = _full(model, ids, mask)
    cache = model.init_cache(2, 16)
    got, cache = _fwd(model, ids[:, :7], mask[:, :7], cache)
    outs = [np.asarray(got)]
    for t in range(7, 12):
        step, cache = _fwd(model, ids[:, t : t + 1], np.ones((2, 1), np.int32), cache)
        outs.append(np.asarray(step))
    got = np.concatenate(outs, axis=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], ref[real], rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert int(cache.end) == 12 and list(np.asarray(cache.lengths)) == list(mask.sum(1))


def test_chunked_prefill_and_last_logits(model):
    ids = np.random.default_rng(1).integers(0, CFG.vocab_size, (1, 10))
    ref = _full(model, ids)
    cache = model.init_cache(1, 10)
    a, cache = _fwd(model, ids[:, :4], np.ones((1, 4), np.int32), cache)
    b, cache = _fwd(model, ids[:, 4:], np.ones((1, 6), np.int32), cache)
    np.testing.assert_allclose(np.concatenate([a, b], 1), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # last_logits picks each row's last real token (here: right padding in row 1)
    ids2 = np.concatenate([ids, ids], 0)
    mask = np.ones_like(ids2)
    mask[1, 6:] = 0
    last = jax.jit(lambda m, ids, mask: m.last_logits(m.embed_tokens(ids), mask, m.init_cache(2, 10))[0])(
        model, jnp.asarray(ids2), jnp.asarray(mask)
    )
    np.testing.assert_allclose(np.asarray(last[0]), ref[0, 9], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(last[1]), ref[0, 5], rtol=1e-5, atol=1e-5)


def test_reference_attention_matches_xla(model):
    ids = np.random.default_rng(2).integers(0, CFG.vocab_size, (2, 9))
    mask = np.ones_like(ids)
    mask[0, :2] = 0
    ref_model = nnx.merge(*_split_with(model, CFG.replace(attention_impl="reference")))
    a, b = _full(model, ids, mask), _full(ref_model, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(a[real], b[real], rtol=1e-5, atol=1e-5 * np.abs(b).max())


def _split_with(model, cfg):
    _, state = nnx.split(model)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Qwen2(cfg, rngs=nnx.Rngs(0))))
    return graphdef, state


def _greedy_by_recompute(model, ids, n):
    """Greedy decoding without a cache: a full forward per token over a fixed-size buffer (the
    causal mask makes the zeros after position t irrelevant to the logits at t)."""
    t = ids.shape[1]
    seq = np.zeros((ids.shape[0], t + n), np.int32)
    seq[:, :t] = ids
    for i in range(n):
        seq[:, t + i] = _full(model, seq)[:, t + i - 1].argmax(-1)
    return seq


def test_generate_greedy_matches_recompute_and_eos(model):
    lm = Qwen2LM.from_model(model)
    ids = np.random.default_rng(3).integers(0, CFG.vocab_size, (2, 5))
    ref = _greedy_by_recompute(model, ids, 8)
    out = lm.generate(ids, max_new_tokens=8, eos_token_id=[])
    np.testing.assert_array_equal(out, ref)
    # stop ids form a set: the first one hit ends the row, later tokens are the first eos id
    eos = int(ref[0, 5 + 3])
    other = 1000  # never produced; listed first so it is the pad id
    out = lm.generate(ids, max_new_tokens=8, eos_token_id=[other, eos])
    row = list(ref[0])
    stop = row.index(eos, 5)
    np.testing.assert_array_equal(out[0, : stop + 1], ref[0, : stop + 1])
    assert np.all(out[0, stop + 1 :] == other)


def test_generate_from_embeddings(model):
    """The sampler's prefill takes inputs_embeds, so a VLM can splice features in."""
    step_fn, embed_fn = qwen2_step_fns(nnx.split(model)[0])
    state = nnx.state(model)
    ids = np.random.default_rng(4).integers(0, CFG.vocab_size, (2, 6))
    mask = np.ones_like(ids)
    mask[0, :2] = 0
    cfg = sampling.SamplingConfig(max_new_tokens=6)
    stop, pad = sampling.stop_ids_array(None)
    emb = jax.jit(lambda m, x: m.embed_tokens(x))(model, jnp.asarray(ids))
    cache = jax.jit(lambda m: m.init_cache(2, 12))(model)
    out = sampling.generate(step_fn, embed_fn, state, cache, emb, jnp.asarray(mask), jax.random.key(0), stop, pad, config=cfg)
    assert out.tokens.shape == (2, 6) and list(np.asarray(out.num_tokens)) == [6, 6]
    # the padded row equals the same prompt alone, unpadded
    alone = Qwen2LM.from_model(model).generate(ids[:1, 2:], max_new_tokens=6, eos_token_id=[])
    np.testing.assert_array_equal(np.asarray(out.tokens[0]), alone[0, 4:])


def test_sampling_determinism_and_limits(model):
    lm = Qwen2LM.from_model(model)
    ids = np.random.default_rng(5).integers(0, CFG.vocab_size, (2, 4))
    kw = dict(max_new_tokens=10, eos_token_id=[], temperature=1.5)
    a = lm.generate(ids, seed=1, **kw)
    np.testing.assert_array_equal(a, lm.generate(ids, seed=1, **kw))
    assert not np.array_equal(a, lm.generate(ids, seed=2, **kw))
    greedy = lm.generate(ids, max_new_tokens=10, eos_token_id=[])
    assert not np.array_equal(a, greedy)
    # a tiny nucleus or top_k=1 keeps only the best token: sampling becomes greedy
    np.testing.assert_array_equal(lm.generate(ids, seed=3, top_p=1e-4, **kw), greedy)
    np.testing.assert_array_equal(lm.generate(ids, seed=3, top_k=1, **kw), greedy)


def test_sample_logits_top_p_support():
    """Samples stay inside the nucleus and follow the renormalised probabilities."""
    probs = np.array([0.5, 0.25, 0.15, 0.06, 0.04])
    logits = jnp.log(jnp.asarray(np.tile(probs, (4000, 1)), jnp.float32))
    cfg = sampling.SamplingConfig(max_new_tokens=1, temperature=1.0, top_p=0.8)
    tok = np.asarray(sampling.sample_logits(logits, jax.random.key(0), cfg))
    assert set(tok) == {0, 1, 2}  # 0.5 + 0.25 < 0.8, so the third token is still needed
    freq = np.bincount(tok, minlength=5)[:3] / len(tok)
    np.testing.assert_allclose(freq, probs[:3] / probs[:3].sum(), atol=0.03)
    with pytest.raises(ValueError, match="top_p"):
        sampling.SamplingConfig(max_new_tokens=1, top_p=0.0)
