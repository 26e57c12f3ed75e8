"""The attention paths agree: XLA's fused path, the CPU per-(batch, head) loop and the einsum
reference, with GQA, masks, biases, causal masking and odd sizes; ``auto`` resolves per target."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm3r_jax.layers.attention import dot_product_attention, resolve_implementation, target_platform

CASES = [  # (B, Tq, Tk, Nq, Nkv, H, mask kind, bias)
    (2, 67, 67, 4, 4, 16, None, False),
    (1, 129, 129, 6, 2, 12, "causal", False),
    (3, 65, 33, 3, 1, 8, "padding", True),
    (2, 70, 70, 2, 2, 20, "full", True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}q{c[1]}k{c[2]}n{c[3]}/{c[4]}h{c[5]}{c[6]}")
def test_cpu_loop_matches_reference_and_xla(case):
    b, tq, tk, nq, nkv, h, kind, use_bias = case
    rng = np.random.default_rng(tq)
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32) for t, n in ((tq, nq), (tk, nkv), (tk, nkv)))
    kw = {}
    if kind == "causal":
        kw["is_causal"] = True
    elif kind == "padding":  # [B, 1, 1, Tk]: some keys of each row are padding
        keep = rng.uniform(size=(b, 1, 1, tk)) > 0.3
        keep[..., 0] = True
        kw["mask"] = jnp.asarray(keep)
    elif kind == "full":  # [B, N, Tq, Tk]
        keep = rng.uniform(size=(b, nq, tq, tk)) > 0.2
        keep[..., 0] = True
        kw["mask"] = jnp.asarray(keep)
    if use_bias:
        kw["bias"] = jnp.asarray(rng.normal(size=(1, nq, tq, tk)), jnp.float32)
    ref = dot_product_attention(q, k, v, implementation="reference", **kw)
    for impl in ("cpu", "xla"):
        out = dot_product_attention(q, k, v, implementation=impl, **kw)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5, rtol=2e-5, err_msg=impl)


def test_auto_resolves_for_the_target_platform():
    assert resolve_implementation("auto") == {"cpu": "cpu", "gpu": "cudnn", "tpu": "splash"}.get(jax.default_backend(), "xla")
    with target_platform("tpu"):
        assert resolve_implementation("auto") == "splash"
    with target_platform("gpu"):
        assert resolve_implementation("auto") == "cudnn"
    with pytest.raises(ValueError, match="unknown attention"):
        resolve_implementation("flash")
