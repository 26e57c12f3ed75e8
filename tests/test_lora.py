"""LoRA adapters: merged == unmerged, zero B == base, adapters separable for the optimizer."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlm3r_jax.layers import Linear
from vlm3r_jax.models.lora import LoRAConfig, LoRAParam, attach_lora, lora_adapters, merge_lora, unmerge_lora


class Block(nnx.Module):
    def __init__(self, rngs):
        self.q_proj = Linear(6, 10, axes=("embed", "heads"), rngs=rngs)
        self.up_proj = Linear(10, 7, axes=("embed", "mlp"), rngs=rngs)
        self.other = Linear(7, 5, rngs=rngs)

    def __call__(self, x):
        return self.other(jnp.tanh(self.up_proj(self.q_proj(x))))


class Net(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([Block(rngs), Block(rngs)])

    def __call__(self, x):
        for blk in self.layers:
            x = jnp.pad(blk(x), ((0, 0), (0, 1)))
        return x


CFG = LoRAConfig(rank=3, alpha=6.0, dropout=0.0, targets=(r"layers\.\d+\.(q_proj|up_proj)",))


def _randomize_b(model, seed=0):
    rng = np.random.default_rng(seed)
    for _, m in nnx.iter_modules(model):
        if isinstance(m, Linear) and m.lora is not None:
            m.lora.lora_b.set_value(jnp.asarray(rng.standard_normal(m.lora.lora_b[...].shape), jnp.float32))


def test_zero_b_is_base_model_exactly():
    model = Net(nnx.Rngs(0))
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    base = np.asarray(model(x))
    paths = attach_lora(model, CFG, rngs=nnx.Rngs(5))
    assert paths == ["layers.0.q_proj", "layers.0.up_proj", "layers.1.q_proj", "layers.1.up_proj"]
    np.testing.assert_array_equal(np.asarray(model(x)), base)


def test_merged_equals_unmerged_and_back():
    model = Net(nnx.Rngs(0))
    attach_lora(model, CFG, rngs=nnx.Rngs(5))
    _randomize_b(model)
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    unmerged = np.asarray(model(x))
    kernel_before = np.asarray(model.layers[0].q_proj.kernel[...])
    adapters = lora_adapters(model)
    assert merge_lora(model) == 4
    assert model.layers[0].q_proj.lora is None
    np.testing.assert_allclose(np.asarray(model(x)), unmerged, rtol=1e-5, atol=1e-5)
    unmerge_lora(model, adapters, CFG, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(model.layers[0].q_proj.kernel[...]), kernel_before, atol=1e-6)
    np.testing.assert_allclose(np.asarray(model(x)), unmerged, rtol=1e-5, atol=1e-5)


def test_adapters_split_from_base_and_carry_axes():
    model = Net(nnx.Rngs(0))
    attach_lora(model, CFG, rngs=nnx.Rngs(5))
    _, lora_state, base_state, _ = nnx.split(model, LoRAParam, nnx.Param, ...)
    lora_leaves = nnx.to_flat_state(lora_state)
    assert len(lora_leaves) == 8
    a = model.layers[0].q_proj.lora.lora_a
    assert a.get_metadata()["logical_axes"] == ("embed", "lora_rank")
    assert model.layers[0].q_proj.lora.lora_b.get_metadata()["logical_axes"] == ("lora_rank", "heads")
    assert all("lora" not in ".".join(map(str, p)) for p, _ in nnx.to_flat_state(base_state))


def test_flax_lora_filters_select_our_adapters():
    """Filters written for Flax's own LoRA (``nnx.LoRAParam``, ``nnx.DiffState``) see our adapters."""
    model = Net(nnx.Rngs(0))
    attach_lora(model, CFG, rngs=nnx.Rngs(5))
    assert issubclass(LoRAParam, nnx.LoRAParam)
    _, flax_lora, rest, _ = nnx.split(model, nnx.LoRAParam, nnx.Param, ...)
    _, ours, _ = nnx.split(model, LoRAParam, ...)
    assert len(nnx.to_flat_state(flax_lora)) == 8
    assert [p for p, _ in nnx.to_flat_state(flax_lora)] == [p for p, _ in nnx.to_flat_state(ours)]
    assert all("lora" not in ".".join(map(str, p)) for p, _ in nnx.to_flat_state(rest))
    x = np.ones((2, 6), np.float32)
    grads = nnx.grad(lambda m: m(x).sum(), argnums=nnx.DiffState(0, nnx.LoRAParam))(model)
    assert {".".join(map(str, p)) for p, _ in nnx.to_flat_state(grads)} == {
        ".".join(map(str, p)) for p, _ in nnx.to_flat_state(flax_lora)}


def test_no_match_is_an_error():
    with pytest.raises(ValueError, match="matched no Linear"):
        attach_lora(Net(nnx.Rngs(0)), LoRAConfig(targets=("nothing",)), rngs=nnx.Rngs(0))
