"""Projector, get_2dPool and video-token layout vs a plain torch re-statement of the reference
(LLaVA-NeXT/VLM-3R ``llava_arch.py``: mm_projector, get_2dPool, add_token_per_grid/frame)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlm3r_jax.convert.llava_projector import load_projector_into
from vlm3r_jax.models.projector import (
    ProjectorConfig,
    VisionProjector,
    layout_video_tokens,
    pool_2d,
)


def torch_get_2dpool(feat, side: int, mode: str, stride: int):
    """Re-statement of ``get_2dPool`` (reference: view, permute, pool/interpolate, permute, view)."""
    import torch.nn.functional as F

    f, _, d = feat.shape
    x = feat.view(f, side, side, -1).permute(0, 3, 1, 2).contiguous()
    if mode == "average":
        x = F.avg_pool2d(x, stride)
    elif mode == "max":
        x = F.max_pool2d(x, stride)
    else:
        h, w = x.shape[2:]
        x = F.interpolate(x, size=[math.ceil(h / stride), math.ceil(w / stride)], mode="bilinear")
    return x.permute(0, 2, 3, 1).reshape(f, -1, d)


def torch_add_token_per_grid(feat, newline):
    """Re-statement of ``add_token_per_grid`` (square grid, no faster-video tokens)."""
    import torch

    h = int(math.sqrt(feat.shape[1]))
    f = feat.shape[0]
    x = feat.view(f, 1, h, h, -1).permute(4, 0, 2, 1, 3).contiguous()
    x = x.flatten(1, 2).flatten(2, 3)
    x = torch.cat((x, newline[:, None, None].expand(*x.shape[:-1], 1)), dim=-1)
    return x.flatten(1, 2).transpose(0, 1)


def torch_add_token_per_frame(feat, newline):
    import torch

    x = feat.permute(2, 0, 1).contiguous()
    x = torch.cat((x, newline[:, None, None].expand(*x.shape[:-1], 1)), dim=-1)
    return x.permute(1, 2, 0).contiguous().flatten(0, 1)


def max_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.mark.torch
@pytest.mark.parametrize("side,stride", [(27, 2), (9, 3), (10, 2), (5, 2)])
@pytest.mark.parametrize("mode", ["bilinear", "average", "max"])
def test_pool_matches_torch(side, stride, mode):
    import torch

    x = np.random.default_rng(side * 10 + stride).standard_normal((3, side * side, 7)).astype(np.float32)
    ref = torch_get_2dpool(torch.from_numpy(x), side, mode, stride).numpy()
    ours = pool_2d(jnp.asarray(x).reshape(3, side, side, 7), mode, stride)
    n = ours.shape[1]
    assert ours.shape == (3, n, n, 7) and n * n == ref.shape[1]
    # bilinear weights are bit-exact; the two-term sums can differ by an ulp (operation order).
    assert max_abs(ours.reshape(3, -1, 7), ref) <= 1e-6


@pytest.mark.torch
@pytest.mark.parametrize("position", ["grid", "frame", "one_token", "no_token"])
def test_layout_matches_torch(position):
    import torch

    f, h, d = 3, 5, 6
    x = np.random.default_rng(0).standard_normal((f, h * h, d)).astype(np.float32)
    nl = np.random.default_rng(1).standard_normal((d,)).astype(np.float32)
    xt, nlt = torch.from_numpy(x), torch.from_numpy(nl)
    if position == "grid":
        ref = torch_add_token_per_grid(xt, nlt)
    elif position == "frame":
        ref = torch_add_token_per_frame(xt, nlt)
    elif position == "one_token":
        ref = torch.cat((xt.flatten(0, 1), nlt[None]), dim=0)
    else:
        ref = xt.flatten(0, 1)
    ours = layout_video_tokens(jnp.asarray(x).reshape(f, h, h, d), jnp.asarray(nl), newline_position=position)
    np.testing.assert_array_equal(np.asarray(ours), ref.numpy())
    cfg = ProjectorConfig(mm_hidden_size=d, hidden_size=d, num_patches_per_side=h, pool_stride=1,
                          newline_position=position)
    assert cfg.num_video_tokens(f) == ours.shape[0]


@pytest.mark.torch
@pytest.mark.parametrize("ptype", ["mlp2x_gelu", "mlp3x_gelu", "linear"])
def test_projector_video_tokens_match_torch(ptype):
    """Whole video path on random weights: torch mm_projector (nn.Sequential, exact GELU) ->
    get_2dPool bilinear -> add_token_per_grid, vs VisionProjector loaded from the torch names."""
    import torch
    from torch import nn

    from vlm3r_jax.convert import DictSource

    dv, d, side, f = 11, 13, 9, 2
    cfg = ProjectorConfig(projector_type=ptype, mm_hidden_size=dv, hidden_size=d, num_patches_per_side=side)
    torch.manual_seed(0)
    if ptype == "linear":
        proj = nn.Linear(dv, d)
    else:
        mods = [nn.Linear(dv, d)]
        for _ in range(1, cfg.mlp_depth):
            mods += [nn.GELU(), nn.Linear(d, d)]
        proj = nn.Sequential(*mods)
    newline = torch.randn(d)
    tensors = {f"model.mm_projector.{k}": v.detach().numpy() for k, v in proj.state_dict().items()}
    tensors["model.image_newline"] = newline.numpy()
    tensors["model.embed_tokens.weight"] = np.zeros((3, d), np.float32)  # unrelated: ignored
    model = VisionProjector(cfg, rngs=nnx.Rngs(0))
    load_projector_into(model, DictSource(tensors))
    x = np.random.default_rng(0).standard_normal((f, side * side, dv)).astype(np.float32)
    with torch.no_grad():
        p = proj(torch.from_numpy(x))
        ref = torch_add_token_per_grid(torch_get_2dpool(p, side, "bilinear", 2), newline).numpy()
    ours = model.video_tokens(jnp.asarray(x))
    assert ours.shape == ref.shape == (cfg.num_video_tokens(f), d)
    assert max_abs(ours, ref) <= 1e-5 * max(1.0, np.abs(ref).max())


def test_config_facts_and_errors():
    cfg = ProjectorConfig()  # LLaVA-Video-7B-Qwen2 / VLM-3R defaults
    assert cfg.pooled_side == (14, 14) and cfg.tokens_per_frame() == 210 and cfg.num_video_tokens(32) == 6720
    assert ProjectorConfig(pool_mode="average").pooled_side == (13, 13)
    llava = {"mm_hidden_size": 36, "hidden_size": 64, "mm_projector_type": "mlp2x_gelu",
             "mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": 2,
             "mm_patch_merge_type": "spatial_unpad", "mm_newline_position": "grid"}
    c = ProjectorConfig.from_llava_config(llava)
    assert (c.mlp_depth, c.has_newline, c.num_video_tokens(4)) == (2, True, 840)
    with pytest.raises(ValueError, match="mm_projector_type"):
        ProjectorConfig(projector_type="qformer")
    with pytest.raises(ValueError, match="mm_newline_position"):
        ProjectorConfig(newline_position="row")
    model = VisionProjector(ProjectorConfig(mm_hidden_size=4, hidden_size=6, num_patches_per_side=3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\[F, 9, D\]"):
        model.pool(jnp.zeros((2, 10, 6)))
    with pytest.raises(ValueError, match="mm_hidden_size"):
        model.project(jnp.zeros((2, 9, 5)))
    no_nl = VisionProjector(ProjectorConfig(mm_hidden_size=4, hidden_size=6, num_patches_per_side=3,
                                            patch_merge_type="spatial"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="image_newline"):
        no_nl.video_tokens(jnp.zeros((1, 9, 4)))


def test_missing_projector_weight_is_reported():
    from vlm3r_jax.convert import CheckpointError, DictSource

    cfg = ProjectorConfig(mm_hidden_size=4, hidden_size=6, num_patches_per_side=3)
    model = VisionProjector(cfg, rngs=nnx.Rngs(0))
    src = DictSource({"model.mm_projector.0.weight": np.zeros((6, 4), np.float32),
                      "model.mm_projector.0.bias": np.zeros((6,), np.float32),
                      "model.mm_projector.2.weight": np.zeros((6, 5), np.float32),
                      "model.image_newline": np.zeros((6,), np.float32)}, name="ckpt.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_projector_into(model, src)
    msg = str(e.value)
    assert "model.mm_projector.2.bias" in msg and "model.mm_projector.2.weight" in msg and "ckpt.safetensors" in msg
