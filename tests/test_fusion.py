"""CrossAttentionFusion vs a torch.nn.MultiheadAttention re-statement, and vs the golden VLM-3R."""

import os

import numpy as np
import pytest
from flax import nnx

from vlm3r_jax.convert import DictSource
from vlm3r_jax.convert.assign import load_state
from vlm3r_jax.convert.fusion_ckpt import reference_mapping
from vlm3r_jax.convert.vlm3r_release import strip_non_lora_prefixes
from vlm3r_jax.models.fusion import CrossAttentionFusion, FusionConfig


def _torch_fusion(d_clip, d_spatial, heads, seed):
    import torch

    torch.manual_seed(seed)
    mods = torch.nn.ModuleDict(
        dict(
            clip_norm=torch.nn.LayerNorm(d_clip),
            spatial_encoder_norm=torch.nn.LayerNorm(d_spatial),
            clip_query_proj=torch.nn.Linear(d_clip, d_clip),
            spatial_encoder_key_proj=torch.nn.Linear(d_spatial, d_clip),
            spatial_encoder_value_proj=torch.nn.Linear(d_spatial, d_clip),
            cross_attention=torch.nn.MultiheadAttention(d_clip, heads, batch_first=True),
            out_proj=torch.nn.Linear(d_clip, d_clip),
            out_norm=torch.nn.LayerNorm(d_clip),
        )
    ).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for p in mods.parameters():
            p.add_(0.1 * torch.randn_like(p))

    def fwd(x, z):
        q = mods["clip_query_proj"](mods["clip_norm"](x))
        sn = mods["spatial_encoder_norm"](z)
        a, _ = mods["cross_attention"](q, mods["spatial_encoder_key_proj"](sn), mods["spatial_encoder_value_proj"](sn))
        return mods["out_norm"](mods["out_proj"](a)) + x

    state = {f"model.fusion_block.{k}": v.detach().numpy() for k, v in mods.state_dict().items()}
    return fwd, state


def _ours(cfg, state_dict):
    model = CrossAttentionFusion(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    state = load_state(state, DictSource(state_dict), reference_mapping(state), what="fusion block")
    return nnx.merge(graphdef, state)


@pytest.mark.torch
@pytest.mark.parametrize("d_clip,d_spatial,heads,frames,p,g", [(36, 32, 18, 3, 10, 11), (54, 19, 6, 2, 7, 5), (30, 30, 3, 1, 1, 4)])
def test_fusion_matches_torch_mha(d_clip, d_spatial, heads, frames, p, g):
    import torch

    fwd, sd = _torch_fusion(d_clip, d_spatial, heads, seed=d_clip)
    model = _ours(FusionConfig(d_clip=d_clip, d_spatial=d_spatial, num_heads=heads), sd)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((frames, p, d_clip)).astype(np.float32)
    z = rng.standard_normal((frames, g, d_spatial)).astype(np.float32)
    with torch.no_grad():
        ref = fwd(torch.from_numpy(x), torch.from_numpy(z)).numpy()
    out = np.asarray(model(x, z))
    assert np.max(np.abs(out - ref)) / np.max(np.abs(ref)) <= 1e-5


def test_fusion_frames_are_independent_and_padding_mask():
    cfg = FusionConfig(d_clip=12, d_spatial=8, num_heads=3, dropout=0.0)
    model = CrossAttentionFusion(cfg, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 12)).astype(np.float32)
    z = rng.standard_normal((2, 6, 8)).astype(np.float32)
    both = np.asarray(model(x, z))
    np.testing.assert_allclose(both[1], np.asarray(model(x[1:], z[1:]))[0], rtol=1e-5, atol=1e-6)
    # masking the last two keys == dropping them
    mask = np.array([[True] * 4 + [False] * 2] * 2)
    np.testing.assert_allclose(np.asarray(model(x, z, mask)), np.asarray(model(x, z[:, :4])), rtol=1e-5, atol=1e-6)


def test_fusion_dropout_only_in_train_mode():
    cfg = FusionConfig(d_clip=12, d_spatial=8, num_heads=3, dropout=0.5)
    model = CrossAttentionFusion(cfg, rngs=nnx.Rngs(params=0, dropout=1))
    x, z = np.ones((1, 4, 12), np.float32), np.ones((1, 3, 8), np.float32)
    a, b = np.asarray(model(x, z)), np.asarray(model(x, z))
    np.testing.assert_array_equal(a, b)
    model.train()
    c = np.asarray(model(x, z))
    assert (c == 0).any()  # the residual is dropped too: dropout covers the whole sum
    model.eval()


def test_bad_heads():
    with pytest.raises(ValueError, match="divisible by num_heads=18"):
        FusionConfig(d_clip=20, d_spatial=8)


@pytest.mark.torch
def test_fusion_golden(golden_dir):
    import torch

    g = os.path.join(golden_dir, "vlm3r_tiny")
    nl = torch.load(os.path.join(g, "vlm3r_lora", "non_lora_trainables.bin"), map_location="cpu", weights_only=True)
    names = strip_non_lora_prefixes(nl)
    sd = {k: nl[v].numpy() for k, v in names.items() if k.startswith("model.fusion_block.")}
    out = np.load(os.path.join(g, "outputs.npz"))
    model = _ours(FusionConfig(d_clip=36, d_spatial=32, num_heads=18), sd)
    fused = np.asarray(model(out["siglip_features"], out["cut3r_tokens"]))
    err = np.max(np.abs(fused - out["fused_features"]))
    assert err <= 2e-5, err
