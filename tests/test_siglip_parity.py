"""SigLIP vision tower parity vs transformers (torch CPU float32, eager attention).

Error metric: max |ours - ref| / max |ref| over the whole tensor ("max relative error"),
required <= 1e-5 for every hidden state.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.torch

# (name, vision config kwargs, use_head, image H x W fed in)
CONFIGS = [
    ("odd_heads_p5", dict(image_size=30, patch_size=5, hidden_size=33, intermediate_size=37,
                          num_hidden_layers=3, num_attention_heads=3), False, (30, 30)),
    ("golden_like_p14", dict(image_size=56, patch_size=14, hidden_size=36, intermediate_size=72,
                             num_hidden_layers=2, num_attention_heads=4), True, (56, 56)),
    ("five_heads_p8_remainder", dict(image_size=48, patch_size=8, hidden_size=20, intermediate_size=19,
                                     num_hidden_layers=4, num_attention_heads=5, layer_norm_eps=1e-5), True, (53, 50)),
]


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def _randomize(model, seed: int) -> None:
    """HF init leaves biases at 0 and norms at 1; perturb everything so each weight matters."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if "layer_norm" in name or "layernorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            elif name.endswith("position_embedding.weight") or name.endswith("probe"):
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / max(1.0, p.shape[-1] ** 0.5) if p.ndim > 1 else 0.1 * noise)


def make_hf_vision(tmp_path, kw: dict, use_head: bool, seed: int = 0, **save_kw):
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(**kw, vision_use_head=use_head, attn_implementation="eager")
    model = SiglipVisionModel(cfg).eval()
    _randomize(model, seed)
    path = os.path.join(str(tmp_path), f"siglip_{seed}")
    model.save_pretrained(path, **save_kw)
    return model, path


def _rel(key: str) -> str:
    """transformers 5 saves SiglipVisionModel keys without the ``vision_model.`` prefix that
    4.x and hub checkpoints use; both layouts must load."""
    return key[len("vision_model.") :] if key.startswith("vision_model.") else key


def torch_forward(model, pixels_nhwc: np.ndarray, **kw):
    import torch

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(pixels_nhwc.transpose(0, 3, 1, 2)))
        return model(pixel_values=x, output_hidden_states=True, **kw)


@pytest.mark.parametrize("name,kw,use_head,hw", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_hidden_states_match_transformers(tmp_path, name, kw, use_head, hw):
    from vlm3r_jax.infer.siglip_vision import SiglipVision

    model, path = make_hf_vision(tmp_path, kw, use_head, seed=len(name))
    x = np.random.default_rng(1).uniform(-1, 1, (3, *hw, 3)).astype(np.float32)
    ref = torch_forward(model, x)
    vt = SiglipVision.from_pretrained(path)
    assert vt.cfg.use_head == use_head and vt.cfg.layers == kw["num_hidden_layers"]
    hs = vt.hidden_states(x)
    assert len(hs) == len(ref.hidden_states) == kw["num_hidden_layers"] + 1
    for i, (a, b) in enumerate(zip(hs, ref.hidden_states)):
        assert a.shape == tuple(b.shape)
        assert rel_err(a, b.numpy()) <= 1e-5, f"hidden_states[{i}]"
    feats = vt.features(x)
    assert rel_err(feats, ref.last_hidden_state.numpy()) <= 1e-5
    if use_head:
        assert rel_err(vt.pooled(x), ref.pooler_output.numpy()) <= 1e-5


@pytest.mark.parametrize("hw", [(45, 30), (20, 35)])
def test_position_interpolation_matches_transformers(tmp_path, hw):
    from vlm3r_jax.infer.siglip_vision import SiglipVision

    name, kw, use_head, _ = CONFIGS[0]
    model, path = make_hf_vision(tmp_path, kw, use_head, seed=3)
    x = np.random.default_rng(2).uniform(-1, 1, (2, *hw, 3)).astype(np.float32)
    ref = torch_forward(model, x, interpolate_pos_encoding=True)
    vt = SiglipVision.from_pretrained(path)
    hs = vt.hidden_states(x)
    assert hs[0].shape[1] == (hw[0] // 5) * (hw[1] // 5)
    for i, (a, b) in enumerate(zip(hs, ref.hidden_states)):
        assert rel_err(a, b.numpy()) <= 1e-5, f"hidden_states[{i}]"
    assert rel_err(vt.features(x), ref.last_hidden_state.numpy()) <= 1e-5


def test_full_siglip_model_sharded_checkpoint(tmp_path):
    """A full SiglipModel (text tower present), saved in several shards, loads its vision tower."""
    import torch
    from transformers import SiglipConfig, SiglipModel

    from vlm3r_jax.infer.siglip_vision import SiglipVision

    vkw = CONFIGS[1][1]
    cfg = SiglipConfig(
        text_config=dict(vocab_size=50, hidden_size=16, intermediate_size=20, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=8),
        vision_config=dict(vkw),
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = SiglipModel(cfg).eval()
    _randomize(model, 5)
    path = str(tmp_path / "full")
    model.save_pretrained(path, max_shard_size="20KB")
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    with open(os.path.join(path, "config.json")) as f:
        assert json.load(f)["model_type"] == "siglip"
    x = np.random.default_rng(0).uniform(-1, 1, (2, 56, 56, 3)).astype(np.float32)
    with torch.no_grad():
        ref = model.vision_model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), output_hidden_states=True)
    vt = SiglipVision.from_pretrained(path)
    assert rel_err(vt.features(x), ref.last_hidden_state.numpy()) <= 1e-5
    assert rel_err(vt.pooled(x), ref.pooler_output.numpy()) <= 1e-5


def test_llava_prefix_drop_last_layer(tmp_path):
    """LLaVA layout: prefix model.vision_tower.vision_tower.vision_model., last layer deleted,
    no head; features = HF hidden_states[-2] (feature_layer=-2, no post-layernorm)."""
    from vlm3r_jax.convert import SafetensorsDir, save_safetensors
    from vlm3r_jax.convert.hf_siglip import LLAVA_VISION_PREFIX, detect_prefix
    from vlm3r_jax.infer.siglip_vision import SiglipVision
    from vlm3r_jax.models.siglip import SiglipVisionConfig

    _, kw, _, hw = CONFIGS[0]
    model, path = make_hf_vision(tmp_path, kw, True, seed=7)
    n = kw["num_hidden_layers"]
    sd = {LLAVA_VISION_PREFIX + _rel(k): v.numpy() for k, v in model.state_dict().items()}
    sd = {k: v for k, v in sd.items() if f".encoder.layers.{n - 1}." not in k and ".head." not in k}
    sd["model.layers.0.mlp.up_proj.weight"] = np.zeros((2, 2), np.float32)  # an LLM tensor, outside the prefix
    llava = tmp_path / "llava"
    llava.mkdir()
    save_safetensors(str(llava / "model.safetensors"), sd)
    assert detect_prefix(SafetensorsDir(str(llava))) == LLAVA_VISION_PREFIX
    cfg = SiglipVisionConfig.from_hf(path, feature_layer=-2, use_post_layernorm=False, use_head=False)
    assert cfg.layers == n - 1
    vt = SiglipVision.from_pretrained(str(llava), config=cfg)
    x = np.random.default_rng(3).uniform(-1, 1, (2, *hw, 3)).astype(np.float32)
    ref = torch_forward(model, x)
    assert rel_err(vt.features(x), ref.hidden_states[-2].numpy()) <= 1e-5


def test_export_round_trip(tmp_path):
    """HF -> ours -> HF names gives back the same tensors (head's packed in_proj included)."""
    from vlm3r_jax.convert.hf_siglip import export_siglip_hf
    from vlm3r_jax.infer.siglip_vision import SiglipVision
    from vlm3r_jax.models.siglip import SiglipVisionModel

    _, kw, _, _ = CONFIGS[2]
    model, path = make_hf_vision(tmp_path, kw, True, seed=11)
    vt = SiglipVision.from_pretrained(path)
    from flax import nnx

    exported = export_siglip_hf(nnx.merge(vt.graphdef, vt.state), vt.cfg, prefix="vision_model.")
    assert isinstance(nnx.merge(vt.graphdef, vt.state), SiglipVisionModel)
    ref = {"vision_model." + _rel(k): v.numpy() for k, v in model.state_dict().items()}
    assert set(exported) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(exported[k], ref[k], err_msg=k)


def test_every_transformers_activation_matches(tmp_path):
    """Each hidden_act name transformers' ACT2FN accepts (parameter-free ones) loads and matches."""
    from transformers.activations import ACT2FN

    from vlm3r_jax.infer.siglip_vision import SiglipVision
    from vlm3r_jax.models.siglip import _ACTS

    x = np.random.default_rng(3).uniform(-1, 1, (2, 21, 21, 3)).astype(np.float32)
    names = sorted(set(_ACTS) & set(ACT2FN))  # transformers 5.25 has all but prelu/xielu (they carry weights)
    assert len(names) >= 20
    for i, act in enumerate(names):
        kw = dict(image_size=21, patch_size=7, hidden_size=12, intermediate_size=11, num_hidden_layers=1,
                  num_attention_heads=2, hidden_act=act)
        model, path = make_hf_vision(tmp_path / act, kw, False, seed=i)
        ref = torch_forward(model, x)
        assert rel_err(SiglipVision.from_pretrained(path).features(x), ref.last_hidden_state.numpy()) <= 1e-5, act
