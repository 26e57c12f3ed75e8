"""Remat policies by name: same value and gradient as no remat, fewer saved residuals the more
is recomputed, the NNX variant, and the one-line errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals

from vlm3r_jax.layers import Linear
from vlm3r_jax.layers.platform import target_platform
from vlm3r_jax.layers.remat import REMAT_POLICIES, checkpoint_policy, remat

ON_CPU = [p for p in REMAT_POLICIES if p != "offload"]


def layer(x, w1, w2):
    """A transformer-ish block: projection, batched score product, softmax, projection."""
    h = jnp.tanh(x @ w1)  # [B, T, F]
    s = jax.nn.softmax(jnp.einsum("btf,bsf->bts", h, h), axis=-1)
    return x + jnp.einsum("bts,bsf->btf", s, h) @ w2


def _args():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.normal(size=(2, 5, 4)), jnp.float32), jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
            jnp.asarray(rng.normal(size=(6, 4)), jnp.float32))


def _loss(fn):
    return lambda *a: jnp.sum(jnp.sin(fn(*a)))


@pytest.mark.parametrize("policy", ON_CPU)
def test_same_value_and_gradient_as_no_remat(policy):
    args = _args()
    want, want_g = jax.value_and_grad(_loss(layer), argnums=(0, 1, 2))(*args)
    for cse in (True, False):
        got, got_g = jax.jit(jax.value_and_grad(_loss(remat(layer, policy, prevent_cse=cse)), argnums=(0, 1, 2)))(*args)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        for g, w in zip(got_g, want_g):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def _saved(policy, capsys) -> int:
    """Residuals kept for the backward pass from inside the layer (not its arguments, not the loss)."""
    print_saved_residuals(_loss(remat(layer, policy)), *_args())
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    return sum(ln.endswith("(layer)") for ln in lines)


def test_fewer_residuals_the_more_is_recomputed(capsys):
    n = {p: _saved(p, capsys) for p in ON_CPU}
    assert n["full"] == 0 < n["dots_with_no_batch_dims_saveable"] < n["dots_saveable"] < n["none"], n
    assert n == {"full": 0, "dots_with_no_batch_dims_saveable": 1, "dots_saveable": 3, "none": 7}


def test_nnx_module_remat_and_scan_friendly():
    model = Linear(4, 4, axes=("embed", "mlp"), rngs=nnx.Rngs(0))
    x = jnp.ones((3, 4))

    def f(m, x):
        return jnp.tanh(m(x))

    want = nnx.grad(lambda m: jnp.sum(f(m, x)))(model)
    got = nnx.grad(lambda m: jnp.sum(remat(f, "full", graph=True, prevent_cse=False)(m, x)))(model)
    np.testing.assert_allclose(got["kernel"][...], want["kernel"][...], rtol=1e-6)


def test_offload_and_unknown_names():
    with target_platform("cpu"), pytest.raises(ValueError, match="'offload'.*TPU and GPU.*full"):
        checkpoint_policy("offload")
    for platform in ("tpu", "gpu"):
        with target_platform(platform):
            assert callable(checkpoint_policy("offload"))
    with pytest.raises(ValueError, match="choose one of none, full, dots_saveable, dots_with_no_batch_dims_saveable, "
                                         "offload"):
        remat(layer, "minimal")
    assert remat(layer, "none") is layer
