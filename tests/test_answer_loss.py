"""The loss on answer tokens only (train/step.py ``answer_token_xent``): the LM head runs on the
gathered labelled positions, with the same loss and gradients as full logits (float32), a row
with more answer tokens than the static bound is loud, and the host check names the fix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlm3r_jax.models.host_init import host_init
from vlm3r_jax.models.lora import LoRAConfig, attach_lora
from vlm3r_jax.models.qwen2 import Qwen2, Qwen2Config
from vlm3r_jax.train.step import answer_positions, answer_token_xent, labels_overflow, next_token_xent
from vlm3r_jax.train.trainable import split_trainable

V, T = 64, 12


def _model():
    cfg = Qwen2Config(vocab_size=V, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                      intermediate_size=48, max_position_embeddings=64, attention_impl="xla")
    m = host_init(lambda: Qwen2(cfg, rngs=nnx.Rngs(0)))
    attach_lora(m, LoRAConfig(rank=2, alpha=4.0, dropout=0.0, targets=(r".*\.(q|v)",)), rngs=nnx.Rngs(1))
    return m


def _labels(rng) -> np.ndarray:
    lab = np.full((3, T), -100, np.int32)
    lab[0, 7:] = rng.integers(0, V, T - 7)  # 5 answer tokens (targets of positions 6..10)
    lab[1, 3:5] = rng.integers(0, V, 2)  # 2, early
    lab[1, 9:11] = rng.integers(0, V, 2)  # and 2 more later: two turns
    # row 2: nothing labelled
    return lab


def test_positions_are_the_labelled_ones_in_order():
    lab = _labels(np.random.default_rng(0))
    idx, target, valid = answer_positions(jnp.asarray(lab), max_labels=6)
    assert idx.shape == (3, 6)
    np.testing.assert_array_equal(np.asarray(idx[0])[:5], [6, 7, 8, 9, 10])  # t predicts t + 1
    np.testing.assert_array_equal(np.asarray(idx[1])[:4], [2, 3, 8, 9])
    assert np.asarray(valid).sum(axis=1).tolist() == [5, 4, 0]
    np.testing.assert_array_equal(np.asarray(target[0])[:5], lab[0, 7:12])


@pytest.mark.parametrize("max_labels", [0, 5])
def test_same_loss_and_gradients_as_full_logits(max_labels):
    rng = np.random.default_rng(1)
    model = _model()
    ids = jnp.asarray(rng.integers(0, V, (3, T)), jnp.int32)
    lab = jnp.asarray(_labels(rng))
    graphdef, params, frozen = split_trainable(model, [r"lm_head\..*"])

    def full(p):
        m = nnx.merge(graphdef, p, frozen)
        logits, _ = m(ids)
        s, n = next_token_xent(logits, lab)
        return s / n

    def gathered(p):
        m = nnx.merge(graphdef, p, frozen)
        h, _ = m.hidden_states(ids)
        s, n = answer_token_xent(h, lab, m.head, max_labels)
        return s / n

    (l1, g1), (l2, g2) = jax.value_and_grad(full)(params), jax.value_and_grad(gathered)(params)
    np.testing.assert_allclose(float(l2), float(l1), rtol=1e-6)
    flat1, flat2 = jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)
    assert len(flat1) == len(flat2) > 1
    for a, b in zip(flat1, flat2):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


def test_too_many_answer_tokens_is_loud():
    lab = jnp.asarray(_labels(np.random.default_rng(2)))
    h = jnp.ones((3, T, 8), jnp.float32)
    head = lambda x: x @ jnp.ones((8, V), jnp.float32)  # noqa: E731
    lsum, count = answer_token_xent(h, lab, head, max_labels=4)  # row 0 holds 5 answer tokens
    assert np.isnan(float(lsum)) and float(count) == 8
    assert labels_overflow(np.asarray(lab), 4) == 5
    assert labels_overflow(np.asarray(lab), 5) == 0 and labels_overflow(np.asarray(lab), 0) == 0
