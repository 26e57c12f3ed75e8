"""Parity with the reference PyTorch code itself on several random odd configs (portrait/landscape
frames, head_dim 12, a single decoder head, odd state sizes, dec_depth 5, shrunken DPT sizes).

Runs only when ``CUT3R_REFERENCE_SRC`` points at a clone of github.com/CUT3R/CUT3R (nothing of it is
committed here); the golden tests cover the default run. Measured (commit 8bc15dc, CPU float32,
torch RoPE stand-in for the curope kernel): final outputs <= 1.7e-5.
"""

import json
import os
import sys

import numpy as np
import pytest

SRC = os.environ.get("CUT3R_REFERENCE_SRC")

CASES = [
    (dict(enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=24, dec_depth=2, dec_num_heads=1,
          state_size=10, state_dec_num_heads=2, local_mem_size=3, ray_enc_depth=1), (6, 5, [3, 5, 7, 9]), (32, 48)),
    (dict(enc_embed_dim=48, enc_depth=3, enc_num_heads=4, dec_embed_dim=40, dec_depth=5, dec_num_heads=2,
          state_size=21, state_dec_num_heads=5, local_mem_size=5, ray_enc_depth=1), (12, 7, [4, 6, 8, 10]), (64, 32)),
]  # fmt: skip


@pytest.mark.torch
@pytest.mark.skipif(not SRC, reason="set CUT3R_REFERENCE_SRC to a clone of github.com/CUT3R/CUT3R")
@pytest.mark.parametrize("case", range(len(CASES)))
def test_against_reference_code(tmp_path, case):
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    from cut3r_vs_reference import import_reference

    from vlm3r_jax.convert.safetensors_io import save_safetensors
    from vlm3r_jax.infer.cut3r_geometry import Cut3rGeometry

    ARCroco3DStereo, ARCroco3DStereoConfig, dpt = import_reference(SRC)
    shape, (fd, ld, dims), (h, w) = CASES[case]
    orig = dpt.DPTOutputAdapter.__init__

    def shrunk(self, *a, **k):  # the reference hard-codes the DPT sizes
        k.update(feature_dim=fd, last_dim=ld, layer_dims=dims)
        orig(self, *a, **k)

    inf = float("inf")
    kw = dict(output_mode="pts3d+pose", head_type="dpt", depth_mode=("exp", -inf, inf), conf_mode=("exp", 1, inf),
              pose_mode=("exp", -inf, inf), landscape_only=False, patch_embed_cls="PatchEmbedDust3R", state_pe="2d",
              rgb_head=True, pose_head=True, img_size=(64, 64), patch_size=16, pos_embed="RoPE100", **shape)  # fmt: skip
    torch.manual_seed(case)
    dpt.DPTOutputAdapter.__init__ = shrunk
    try:
        model = ARCroco3DStereo(ARCroco3DStereoConfig(**kw)).eval()
    finally:
        dpt.DPTOutputAdapter.__init__ = orig
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    t = 3
    img = torch.rand(t, 3, h, w) * 2 - 1
    views = [
        dict(
            img=img[i : i + 1],
            ray_map=torch.full((1, 6, h, w), torch.nan),
            true_shape=torch.tensor([[h, w]]),
            img_mask=torch.tensor([True]),
            ray_mask=torch.tensor([False]),
            update=torch.tensor([True]),
            reset=torch.tensor([False]),
            camera_pose=torch.eye(4)[None],
        )  # fmt: skip
        for i in range(t)
    ]
    with torch.no_grad():
        ref = model(views).ress
    save_safetensors(str(tmp_path / "model.safetensors"), {k: v.numpy() for k, v in model.state_dict().items()})
    ctor = {k: (["exp", "-inf", "inf"] if k in ("depth_mode", "pose_mode") else list(v) if isinstance(v, tuple) else v)
            for k, v in kw.items()}  # fmt: skip
    ctor["conf_mode"] = ["exp", 1, "inf"]
    (tmp_path / "config.json").write_text(json.dumps({"constructor_kwargs": ctor}))
    out = Cut3rGeometry.from_pretrained(str(tmp_path)).stream(img.numpy().transpose(0, 2, 3, 1))
    for k in ("pts3d_in_self_view", "conf_self", "rgb", "camera_pose", "pts3d_in_other_view", "conf"):
        r = np.stack([ref[i][k][0].numpy() for i in range(t)])
        np.testing.assert_allclose(out[k], r, atol=1e-4, rtol=1e-3, err_msg=k)
