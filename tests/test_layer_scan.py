"""Layer stacks (vlm3r_jax/layers/scan.py): one compiled layer body whatever the depth, per-layer
checkpoint names over stacked parameters, and every remat policy giving the loss and gradients
of ``none`` on the tiny VLM-3R (SigLIP, CUT3R online, fusion, projector, Qwen2 + LoRA)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_vlm3r_train import _batch, _config

from vlm3r_jax.convert.assign import Src, flat_arrays, load_state
from vlm3r_jax.convert.sources import DictSource
from vlm3r_jax.layers.remat import REMAT_POLICIES
from vlm3r_jax.models.host_init import host_init
from vlm3r_jax.models.qwen2 import Qwen2, Qwen2Config
from vlm3r_jax.models.vlm3r import VLM3R
from vlm3r_jax.train.trainable import split_trainable
from vlm3r_jax.train.vlm3r_task import vlm3r_loss


def _qwen2(layers: int) -> Qwen2Config:
    return Qwen2Config(vocab_size=64, hidden_size=32, num_layers=layers, num_heads=4, num_kv_heads=2,
                       intermediate_size=48, attention_impl="xla")


def _grad_hlo(cfg: Qwen2Config) -> str:
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Qwen2(cfg, rngs=nnx.Rngs(0))))
    ids = jax.ShapeDtypeStruct((2, 16), jnp.int32)

    def loss(p, x):
        return nnx.merge(graphdef, p)(x)[0].astype(jnp.float32).mean()

    return jax.jit(jax.grad(loss)).lower(params, ids).as_text()


def test_28_layers_lower_to_one_layer_body():
    """The 28-layer program is about as large as the 2-layer one: XLA compiles one scanned body
    (a Python loop grew the program, and its compile time, with depth; docs/launch.md has timings)."""
    two, many = len(_grad_hlo(_qwen2(2))), len(_grad_hlo(_qwen2(28)))
    assert many < 1.2 * two, (two, many)


def test_stacked_params_and_per_layer_names():
    model = host_init(lambda: Qwen2(_qwen2(3), rngs=nnx.Rngs(0)))
    q = model.layers.attn.q.kernel
    assert q.get_value().shape == (3, 32, 32)
    assert q.get_metadata()["logical_axes"] == ("layers", "embed", "heads")
    flat = flat_arrays(nnx.state(model, nnx.Param))
    assert "layers.2.attn.q.kernel" in flat and "layers.attn.q.kernel" not in flat
    np.testing.assert_array_equal(flat["layers.1.attn.q.kernel"], np.asarray(q.get_value()[1]))
    # the loader fills a stacked target from its per-layer tensors
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen2(_qwen2(3), rngs=nnx.Rngs(0))))
    loaded = load_state(state, DictSource(flat), {k: Src(k) for k in flat})
    np.testing.assert_array_equal(np.asarray(nnx.merge(graphdef, loaded).layers.attn.q.kernel.get_value()),
                                  np.asarray(q.get_value()))


def test_kv_cache_is_stacked_per_layer():
    model = host_init(lambda: Qwen2(_qwen2(3), rngs=nnx.Rngs(0)))
    cache = model.init_cache(2, 12)
    assert cache.k.shape == (3, 2, 12, 2, 8) and cache.num_layers == 3
    _, cache = model(jnp.ones((2, 5), jnp.int32), attention_mask=jnp.ones((2, 5), jnp.int32), cache=cache)
    assert int(cache.end) == 5 and bool(jnp.any(cache.k[2, :, 4] != 0)) and bool(jnp.all(cache.k[:, :, 5:] == 0))


@pytest.fixture(scope="module")
def tiny_state():
    return nnx.split(host_init(lambda: VLM3R(_config(), rngs=nnx.Rngs(params=0, dropout=1))))[1]


def _loss_and_grads(state, policy: str):
    """CUT3R runs online (no cached geometry tokens), so all three towers' scans are differentiated."""
    cfg = _config()
    cfg = cfg.__class__(**{**cfg.__dict__, "llm": cfg.llm.replace(remat=policy),
                           "vision": cfg.vision.__class__(**{**cfg.vision.__dict__, "remat": policy}),
                           "geometry": cfg.geometry.replace(remat=policy)})
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: VLM3R(cfg, rngs=nnx.Rngs(params=0, dropout=1))))
    model = nnx.merge(graphdef, jax.tree_util.tree_map(lambda x: x, state))
    gdef, params, frozen = split_trainable(model, [r".*"], include_lora=True)
    batch = _batch(2, seed=3)

    def f(p):
        lsum, count = vlm3r_loss(nnx.merge(gdef, p, frozen), batch)
        return lsum / count

    loss, grads = jax.jit(jax.value_and_grad(f))(params)
    return float(loss), {".".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(grads)}


@pytest.mark.slow  # four gradient compiles of the whole tiny VLM-3R: ~2 min on 2 idle cores; launch/test.sh --all
def test_remat_policies_match_none(tiny_state):
    ref_loss, ref = _loss_and_grads(tiny_state, "none")
    assert any(k.startswith("spatial_tower.") and np.any(v != 0) for k, v in ref.items())
    for policy in REMAT_POLICIES:
        if policy in ("none", "offload"):  # offload needs pinned host memory (TPU/GPU)
            continue
        loss, grads = _loss_and_grads(tiny_state, policy)
        assert abs(loss - ref_loss) < 1e-6, policy
        for k, g in ref.items():
            # recomputation reorders float32 sums: equal to float32 rounding, not bit for bit
            np.testing.assert_allclose(grads[k], g, rtol=1e-4, atol=1e-5, err_msg=f"{policy}: {k}")


def test_offload_policy_refused_on_cpu():
    with pytest.raises(ValueError, match="pinned host memory"):
        _grad_hlo(_qwen2(2).replace(remat="offload"))
