"""SigLIP tower without torch: bad input, checkpoint errors, logical axes and sharded execution."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlm3r_jax import sharding
from vlm3r_jax.convert import CheckpointError, save_safetensors
from vlm3r_jax.convert.assign import flat_variables
from vlm3r_jax.convert.hf_siglip import export_siglip_hf
from vlm3r_jax.infer.siglip_vision import SiglipVision
from vlm3r_jax.models.siglip import SiglipVisionConfig, SiglipVisionModel

HF_CFG = dict(model_type="siglip_vision_model", image_size=28, patch_size=7, hidden_size=12, intermediate_size=10,
              num_hidden_layers=2, num_attention_heads=3, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")


def write_ckpt(path, tensors=None, cfg=HF_CFG):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    if tensors is None:
        # Random values drawn in numpy on the abstract state: eager init would compile every op.
        mcfg = SiglipVisionConfig.from_hf(cfg)
        state = nnx.state(nnx.eval_shape(lambda: SiglipVisionModel(mcfg, rngs=nnx.Rngs(0))))
        rng = np.random.default_rng(0)
        state = jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), state)
        tensors = export_siglip_hf(state, mcfg, prefix="")
    save_safetensors(os.path.join(path, "model.safetensors"), tensors)
    return tensors


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("siglip") / "hf")
    tensors = write_ckpt(path)
    return path, tensors


def test_bad_pixels_raise_clear_errors(ckpt):
    vt = SiglipVision.from_pretrained(ckpt[0])
    with pytest.raises(ValueError, match="channels last.*NCHW"):
        vt.features(np.zeros((2, 3, 28, 28), np.float32))
    with pytest.raises(ValueError, match="3 channels"):
        vt.features(np.zeros((2, 28, 28, 4), np.float32))
    with pytest.raises(TypeError, match="floating point.*siglip_preprocess"):
        vt.features(np.zeros((2, 28, 28, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        vt.hidden_states(np.zeros((28, 28, 3), np.float32))
    with pytest.raises(ValueError, match="smaller than one 7x7 patch"):
        vt.features(np.zeros((1, 5, 28, 3), np.float32))
    with pytest.raises(ValueError, match="without its pooling head|pooling head"):
        SiglipVision.from_pretrained(ckpt[0], use_head=False).pooled(np.zeros((1, 28, 28, 3), np.float32))
    model = nnx.merge(vt.graphdef, vt.state)
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model.features(jnp.zeros((1, 35, 28, 3)), interpolate_pos_encoding=False)


def test_missing_and_misshaped_weights(tmp_path, ckpt):
    tensors = dict(ckpt[1])
    del tensors["encoder.layers.1.mlp.fc2.bias"]
    tensors["encoder.layers.0.self_attn.q_proj.weight"] = np.zeros((12, 11), np.float32)
    path = str(tmp_path / "broken")
    write_ckpt(path, tensors)
    with pytest.raises(CheckpointError) as e:
        SiglipVision.from_pretrained(path)
    msg = str(e.value)
    assert "encoder.layers.1.mlp.fc2.bias" in msg and "missing" in msg
    assert "layers.0.self_attn.q_proj.kernel" in msg and "model.safetensors" in msg
    # A checkpoint without the tower at all names the prefixes it tried.
    path2 = str(tmp_path / "empty")
    write_ckpt(path2, {"lm_head.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(CheckpointError, match="no SigLIP vision tower"):
        SiglipVision.from_pretrained(path2)
    with pytest.raises(FileNotFoundError):
        SiglipVision.from_pretrained(str(tmp_path / "nope"))


def test_unused_tensors_are_skipped_but_strangers_reported(tmp_path, ckpt):
    # A head in the file with use_head=False and layer 1 with num_layers_used=1 are fine.
    vt = SiglipVision.from_pretrained(ckpt[0], num_layers_used=1, use_head=False, use_post_layernorm=False)
    assert vt.cfg.layers == 1 and len(vt.hidden_states(np.zeros((1, 28, 28, 3), np.float32))) == 2
    tensors = dict(ckpt[1])
    tensors["encoder.layers.0.self_attn.rotary.weight"] = np.zeros((2,), np.float32)
    path = str(tmp_path / "stranger")
    write_ckpt(path, tensors)
    with pytest.raises(CheckpointError, match="unexpected.*rotary"):
        SiglipVision.from_pretrained(path)


def test_config_parsing():
    full = {"model_type": "siglip", "text_config": {"hidden_size": 8}, "vision_config": dict(HF_CFG, vision_use_head=False)}
    c = SiglipVisionConfig.from_hf(full, feature_layer=-2)
    assert (c.hidden_size, c.layers, c.use_head, c.num_patches_per_side) == (12, 1, False, 4)
    assert SiglipVisionConfig.from_hf(HF_CFG, feature_layer=0).layers == 0
    so400m = SiglipVisionConfig()
    assert (so400m.num_patches, so400m.layers) == (729, 27)
    # Keys missing from config.json take transformers' defaults (SigLIP base), not so400m's.
    base = SiglipVisionConfig.from_hf({"model_type": "siglip_vision_model"}, feature_layer=-2)
    assert (base.hidden_size, base.image_size, base.patch_size, base.layers) == (768, 224, 16, 11)
    assert SiglipVisionConfig.llava_video({"num_hidden_layers": 27}).layers == 26
    with pytest.raises(ValueError, match="not divisible"):
        SiglipVisionConfig(hidden_size=10, num_attention_heads=3)
    with pytest.raises(ValueError, match="out of range"):
        SiglipVisionConfig.from_hf(HF_CFG, feature_layer=-5)
    with pytest.raises(ValueError, match="not a SigLIP"):
        SiglipVisionConfig.from_hf({"model_type": "qwen2"})


def test_every_param_has_logical_axes():
    model = nnx.eval_shape(lambda: SiglipVisionModel(SiglipVisionConfig.from_hf(HF_CFG), rngs=nnx.Rngs(0)))
    for path, var in flat_variables(nnx.state(model)).items():
        axes = var.get_metadata().get("logical_axes")
        assert axes is not None and len(axes) == var.get_value().ndim, path


def test_sharded_frames_match_single_device(ckpt):
    vt = SiglipVision.from_pretrained(ckpt[0])
    x = np.random.default_rng(0).uniform(-1, 1, (4, 28, 28, 3)).astype(np.float32)
    want = np.asarray(vt.features(x))
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    state = sharding.shard_state(vt.state, mesh)
    xs = sharding.shard_batch(x, mesh)

    @jax.jit
    def run(state, x):
        return nnx.merge(vt.graphdef, state).features(x)

    with sharding.use_mesh(mesh):
        got = run(state, xs)
    assert got.sharding.spec[0] is not None  # frames stay split over data/fsdp
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_bfloat16_runs(ckpt):
    vt = SiglipVision.from_pretrained(ckpt[0], dtype="bfloat16")
    x = np.random.default_rng(0).uniform(-1, 1, (4, 28, 28, 3)).astype(np.float32)
    ref = np.asarray(SiglipVision.from_pretrained(ckpt[0]).features(x))
    got = vt.features(x.astype(jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    assert np.abs(np.asarray(got, np.float32) - ref).max() < 0.1 * np.abs(ref).max()


def test_api_facade(ckpt):
    from vlm3r_jax import api

    vt = api.load_siglip_vision(ckpt[0])
    hs = vt.hidden_states(np.zeros((1, 28, 28, 3), np.float32))
    assert len(hs) == 3 and hs[0].shape == (1, 16, 12)
    assert vt.features(np.zeros((1, 28, 28, 3), np.float32)).shape == (1, 16, 12)


def test_gradients_flow_and_so400m_shapes(ckpt):
    """The tower is trainable in LLaVA-Video (mm_tunable_parts); the so400m shape traces abstractly."""
    vt = SiglipVision.from_pretrained(ckpt[0])
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 35, 28, 3)), jnp.float32)  # interpolated grid

    def loss(state):
        return jnp.sum(nnx.merge(vt.graphdef, state).features(x) ** 2)

    grads = jax.grad(loss)(vt.state)
    flat = flat_variables(grads)
    assert all(np.isfinite(np.asarray(v.get_value())).all() for v in flat.values())
    assert np.abs(np.asarray(flat["position_embedding"].get_value())).max() > 0
    cfg = SiglipVisionConfig(num_layers_used=26, use_post_layernorm=False, use_head=False)
    model = nnx.eval_shape(lambda: SiglipVisionModel(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    out = jax.eval_shape(lambda m, p: m.features(p), model, jax.ShapeDtypeStruct((32, 384, 384, 3), jnp.bfloat16))
    assert out.shape == (32, 729, 1152) and out.dtype == jnp.bfloat16
