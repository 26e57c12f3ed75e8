"""Offline CUT3R feature cache (launch.extract_geometry): extraction, resume, reading, .pt conversion."""

import os

import numpy as np
import pytest

from configs.cut3r_512_dpt import get_config
from data_pipeline.video import sample_indices
from launch.extract_geometry import (
    convert_pt_cache,
    extract,
    load_feature_cache,
    official_cache_path,
)
from vlm3r_jax.convert.cut3r_ckpt import save_cut3r_dir
from vlm3r_jax.models.cut3r import init_cut3r, tiny_config


def _write_video(path, n=5, h=48, w=64):
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=5)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for _ in range(n):
            img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_official_cache_naming():
    assert official_cache_path("/d/scannet/videos/scene0001_00.mp4") == "/d/scannet/spatial_features/scene0001_00.pt"
    np.testing.assert_array_equal(sample_indices(10, 4), [0, 3, 6, 9])


def test_extract_resume_and_read(tmp_path):
    ckpt = tmp_path / "ckpt"
    save_cut3r_dir(init_cut3r(tiny_config(enc_depth=1, dec_depth=2, local_mem_depth=1), 0), str(ckpt))
    vids = tmp_path / "videos"
    (vids / "sub").mkdir(parents=True)
    _write_video(vids / "a.mp4")
    _write_video(vids / "sub" / "b.mp4", n=3)
    cfg = get_config()
    cfg.checkpoint = str(ckpt)
    cfg.extract.num_frames = 2
    cfg.extract.siglip_size = 48
    cfg.extract.cut3r_size = (32, 32)
    out = tmp_path / "out"
    written = extract(cfg, str(vids), str(out))
    assert sorted(os.path.relpath(p, out) for p in written) == ["a.safetensors", os.path.join("sub", "b.safetensors")]
    tok = load_feature_cache(str(out / "a.safetensors"))
    assert tok.shape == (2, 1 + 4, 32) and tok.dtype == np.float16
    assert extract(cfg, str(vids), str(out)) == []  # resumable: nothing left to do
    cfg.extract.format = "npz"
    extract(cfg, str(vids), str(tmp_path / "npz"), limit=1)
    np.testing.assert_array_equal(load_feature_cache(str(tmp_path / "npz" / "a.npz")), tok)


@pytest.mark.torch
def test_convert_official_pt_cache(tmp_path):
    import torch

    src = tmp_path / "spatial_features"
    src.mkdir()
    cam = torch.randn(3, 1, 8, dtype=torch.float16)
    patch = torch.randn(3, 9, 8, dtype=torch.float16)
    torch.save({"camera_tokens": cam, "patch_tokens": patch}, src / "scene0.pt")
    written = convert_pt_cache(str(src), str(tmp_path / "ours"))
    tok = load_feature_cache(written[0])
    np.testing.assert_array_equal(tok, torch.cat([cam, patch], 1).numpy())
