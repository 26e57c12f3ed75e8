"""Fusion-block variants (config ``fusion_block``) against torch re-statements of the reference
modules (llava/model/multimodal_fusion_block), loaded by the reference parameter names."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlm3r_jax.convert import DictSource
from vlm3r_jax.convert.assign import flat_variables, load_state
from vlm3r_jax.convert.fusion_ckpt import export_fusion, reference_mapping
from vlm3r_jax.models.fusion import FUSION_BLOCKS, FusionConfig, build_fusion

VARIANTS = ["cross_attention", "cross_attention_with_mlp", "transformer", "mlp_after_clip_proj", "concat_mlp",
            "concat_self_attention"]


def _torch_variant(name, d_clip, d_sp, d_llm, heads, seed):
    """The reference module structure (same submodule names) and forward, written with torch.nn."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    gelu = nn.GELU()

    def seq(i, h, o, act):
        return nn.Sequential(nn.Linear(i, h), act, nn.Linear(h, o))

    class MLP(nn.Module):
        def __init__(self, i, h, o):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(i, h), nn.Linear(h, o)

        def forward(self, x):
            return self.fc2(gelu(self.fc1(x)))

    d = d_clip
    m = nn.Module()
    if name in ("cross_attention", "cross_attention_with_mlp", "transformer"):
        m.clip_norm, m.spatial_encoder_norm = nn.LayerNorm(d_clip), nn.LayerNorm(d_sp)
        if name == "cross_attention_with_mlp":
            m.clip_query_proj, m.spatial_encoder_key_proj, m.spatial_encoder_value_proj = (
                MLP(d_clip, 4 * d, d), MLP(d_sp, 4 * d, d), MLP(d_sp, 4 * d, d))
        else:
            m.clip_query_proj = nn.Linear(d_clip, d)
            m.spatial_encoder_key_proj, m.spatial_encoder_value_proj = nn.Linear(d_sp, d), nn.Linear(d_sp, d)
        m.cross_attention = nn.MultiheadAttention(d, heads, batch_first=True)
    if name == "cross_attention":
        m.out_norm, m.out_proj = nn.LayerNorm(d), nn.Linear(d, d_clip)
    elif name == "cross_attention_with_mlp":
        m.out_norm, m.out_norm_attn, m.out_proj = nn.LayerNorm(d_clip), nn.LayerNorm(d), nn.Linear(d, d_clip)
    elif name == "transformer":
        m.out_norm, m.ffn = nn.LayerNorm(d), seq(d, 4 * d, d_clip, nn.ReLU())
    elif name == "mlp_after_clip_proj":
        m.spatial_features_mlp = seq(d_sp, d_llm, d_llm, nn.GELU())
    else:
        m.spatial_features_proj_mlp = seq(d_sp, d_llm, d_llm, nn.GELU())
        if name == "concat_mlp":
            m.fusion_mlp = seq(2 * d_llm, 4 * d_llm, d_llm, nn.GELU())
        else:
            m.pre_attn_norm = nn.LayerNorm(2 * d_llm)
            m.self_attention = nn.MultiheadAttention(2 * d_llm, heads, dropout=0.1, batch_first=True)
            m.post_attn_norm = nn.LayerNorm(2 * d_llm)
            m.output_proj = nn.Linear(2 * d_llm, d_llm)
    m.eval()
    with torch.no_grad():  # non-trivial norms and biases
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))

    def fwd(x, z):
        if name in ("cross_attention", "cross_attention_with_mlp", "transformer"):
            sn = m.spatial_encoder_norm(z)
            a, _ = m.cross_attention(m.clip_query_proj(m.clip_norm(x)), m.spatial_encoder_key_proj(sn),
                                     m.spatial_encoder_value_proj(sn))
            if name == "cross_attention":
                return m.out_norm(m.out_proj(a)) + x
            if name == "cross_attention_with_mlp":
                return x + m.out_proj(m.out_norm_attn(a))
            r = a + x
            return m.ffn(m.out_norm(r)) + r
        if name == "mlp_after_clip_proj":
            return x + m.spatial_features_mlp(z)
        c = torch.cat([x, m.spatial_features_proj_mlp(z)], dim=-1)
        if name == "concat_mlp":
            return m.fusion_mlp(c)
        n = m.pre_attn_norm(c)
        a, _ = m.self_attention(n, n, n)
        return m.output_proj(m.post_attn_norm(a + c))

    return fwd, {k: v.detach().numpy() for k, v in m.state_dict().items()}


# (d_clip, d_spatial, d_llm, heads, frames, P, G): odd widths, G != P for the cross-attention kinds
SHAPES = {
    "cross_attention": (36, 19, 0, 6, 2, 7, 5),
    "cross_attention_with_mlp": (30, 13, 0, 5, 3, 6, 9),
    "transformer": (27, 22, 0, 9, 2, 5, 4),
    "mlp_after_clip_proj": (30, 11, 21, 0, 2, 9, 9),
    "concat_mlp": (30, 17, 15, 0, 3, 4, 4),
    "concat_self_attention": (30, 13, 27, 6, 2, 5, 5),
}


@pytest.mark.torch
@pytest.mark.parametrize("name", VARIANTS)
def test_variant_matches_torch_restatement(name):
    import torch

    d_clip, d_sp, d_llm, heads, f, p, g = SHAPES[name]
    fwd, sd = _torch_variant(name, d_clip, d_sp, d_llm, heads, seed=len(name))
    cfg = FusionConfig(fusion_block=name, d_clip=d_clip, d_spatial=d_sp, num_heads=heads or 18,
                       d_llm=d_llm or None)
    ours = build_fusion(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(ours)
    state = load_state(state, DictSource({"model.fusion_block." + k: v for k, v in sd.items()}),
                       reference_mapping(state), what=f"{name} fusion block")  # every tensor used, no extra
    ours = nnx.merge(graphdef, state)
    # export gives back exactly the reference state dict (names, layouts, packed in_proj)
    exp = export_fusion(ours)
    assert sorted(exp) == sorted(sd)
    for k in sd:
        np.testing.assert_array_equal(exp[k], sd[k], err_msg=k)

    rng = np.random.default_rng(1)
    width = d_llm if cfg.after_projector else d_clip
    x = rng.standard_normal((f, p, width)).astype(np.float32)
    z = rng.standard_normal((f, p if cfg.after_projector else g, d_sp)).astype(np.float32)
    with torch.no_grad():
        want = fwd(torch.from_numpy(x), torch.from_numpy(z)).numpy()
    got = np.asarray(ours(jnp.asarray(x), jnp.asarray(z)))
    assert got.shape == (f, p, width)
    assert float(np.max(np.abs(got - want))) <= 1e-5


def test_unknown_and_inconsistent_configs():
    with pytest.raises(ValueError, match=r"unknown fusion_block 'cross_attn'; valid choices: \['cross_attention'"):
        FusionConfig(fusion_block="cross_attn")
    with pytest.raises(ValueError, match="not implemented here"):
        FusionConfig(fusion_block="llava_3d_fusion_block")
    with pytest.raises(ValueError, match="divisible by num_heads=36"):
        FusionConfig(fusion_block="concat_self_attention", d_llm=3584, num_heads=36)  # 7168 / 36: not even the reference builds it
    with pytest.raises(ValueError, match="give d_llm"):
        build_fusion(FusionConfig(fusion_block="concat_mlp"), rngs=nnx.Rngs(0))
    m = build_fusion(FusionConfig(fusion_block="mlp_after_clip_proj", d_clip=18, d_spatial=8), d_llm=12,
                     rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="same \\[frames, tokens\\]"):
        m(jnp.zeros((2, 4, 12)), jnp.zeros((2, 5, 8)))
    assert set(FUSION_BLOCKS) == set(VARIANTS)


def _tiny_vlm3r(fusion_block, select="all"):
    from vlm3r_jax.models.cut3r.config import tiny_config
    from vlm3r_jax.models.projector import ProjectorConfig
    from vlm3r_jax.models.qwen2 import Qwen2Config
    from vlm3r_jax.models.siglip import SiglipVisionConfig
    from vlm3r_jax.models.vlm3r import VLM3R, VLM3RConfig

    lc = Qwen2Config(vocab_size=50, hidden_size=24, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=30)
    vc = SiglipVisionConfig(image_size=28, patch_size=7, hidden_size=18, intermediate_size=20, num_hidden_layers=1,
                            num_attention_heads=2, use_post_layernorm=False, use_head=False)
    gc = tiny_config(enc_embed_dim=16, enc_num_heads=2, dec_embed_dim=16, dec_num_heads=2, dec_depth=1,
                     state_dec_num_heads=2)
    pc = ProjectorConfig(mm_hidden_size=18, hidden_size=24, num_patches_per_side=4, patch_merge_type="spatial_unpad",
                         newline_position="grid")
    cfg = VLM3RConfig(llm=lc, vision=vc, projector=pc, geometry=gc, spatial_select=select,
                      fusion=FusionConfig(fusion_block=fusion_block, d_clip=18, d_spatial=16, num_heads=6))
    model = nnx.eval_shape(lambda: VLM3R(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    for path, var in flat_variables(nnx.state(model, nnx.Param)).items():
        v = var.get_value()
        var.set_value(jnp.asarray((1.0 if path.endswith("scale") else 0.0) + 0.2 * rng.standard_normal(v.shape),
                                  v.dtype))
    return model


@pytest.mark.parametrize("fusion_block", ["concat_mlp", "cross_attention_with_mlp"])
def test_video_embeds_order_and_tokens(fusion_block):
    """After-projector variants fuse the projected features before pooling; patch-token variants
    drop the camera token; both as the reference's encode_images."""
    from vlm3r_jax.models.projector import layout_video_tokens

    model = _tiny_vlm3r(fusion_block)
    rng = np.random.default_rng(1)
    feats = jnp.asarray(rng.standard_normal((2 * 3, 16, 18)), jnp.float32)  # B=2 videos x F=3 frames, 4x4 grid
    geo = jnp.asarray(rng.standard_normal((2, 3, 17, 16)), jnp.float32)  # camera token + 16 patch tokens
    got = model.video_embeds(None, geometry_tokens=geo, features=feats)
    patch = geo.reshape(6, 17, 16)[:, 1:]
    if fusion_block == "concat_mlp":
        x = model.fusion_block(model.mm_projector.project(feats), patch)
    else:
        x = model.mm_projector.project(model.fusion_block(feats, patch))
    pooled = model.mm_projector.pool(x).reshape(2, 3, 2, 2, 24)
    want = jnp.stack([layout_video_tokens(pooled[i], model.mm_projector.image_newline[...], newline_position="grid",
                                          patch_merge_type="spatial_unpad") for i in range(2)])
    assert got.shape == (2, 3 * 2 * 3, 24)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_transformer_needs_all_tokens():
    with pytest.raises(ValueError, match="only with spatial_tower_select_feature='all'"):
        _tiny_vlm3r("transformer", select="patch_tokens")
