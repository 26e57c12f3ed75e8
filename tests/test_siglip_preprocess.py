"""SigLIP frame preprocessing vs transformers' SiglipImageProcessor / LLaVA's SigLipImageProcessor
(384, PIL bicubic, rescale 1/255, mean = std = 0.5) on random uint8 frames of non-square sizes."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from data_pipeline.image_preprocess import (
    normalize_uint8,
    normalize_uint8_np,
    resize_bicubic_pil,
    resize_bilinear,
    siglip_preprocess,
    siglip_preprocess_np,
)

SIZES = [(240, 320), (100, 700), (480, 360), (384, 384), (37, 53)]


def frames(h, w, n=2, seed=0):
    return np.random.default_rng(seed + h * 7 + w).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def llava_siglip_processor(batch: np.ndarray) -> np.ndarray:
    """LLaVA-NeXT ``SigLipImageProcessor.preprocess`` restated with the same transformers
    functions it chains (convert_to_rgb is a no-op on RGB arrays)."""
    from transformers.image_transforms import normalize, rescale, resize
    from transformers.image_utils import ChannelDimension, PILImageResampling

    out = []
    for f in batch:
        x = resize(f, size=(384, 384), resample=PILImageResampling.BICUBIC, data_format=ChannelDimension.FIRST)
        x = rescale(x, scale=1 / 255, data_format=ChannelDimension.FIRST)
        x = normalize(x, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), data_format=ChannelDimension.FIRST)
        out.append(x)
    return np.stack(out).transpose(0, 2, 3, 1)


@pytest.mark.torch
@pytest.mark.parametrize("hw", SIZES)
def test_host_path_matches_transformers(hw):
    from transformers import SiglipImageProcessor
    from transformers.image_utils import PILImageResampling

    x = frames(*hw)
    proc = SiglipImageProcessor(size={"height": 384, "width": 384}, resample=PILImageResampling.BICUBIC,
                                image_mean=[0.5] * 3, image_std=[0.5] * 3)
    want = proc(list(x), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    got = siglip_preprocess_np(x)
    assert got.dtype == np.float32 and got.shape == (2, 384, 384, 3)
    assert np.abs(got - want).max() <= 1e-5
    assert np.abs(got - llava_siglip_processor(x)).max() <= 1e-5


@pytest.mark.parametrize("hw,out", [((240, 320), (384, 384)), ((480, 360), (384, 384)), ((37, 53), (20, 71)),
                                    ((100, 700), (384, 384)), ((9, 5), (13, 3))])
def test_jax_resize_is_pillow_exact(hw, out):
    """Each pass equals a one-axis PIL resize bit for bit; both pass orders are checked."""
    x = frames(*hw, n=1)[0]
    im = Image.fromarray(x)
    (oh, ow), (h, w) = out, hw
    h_first = np.asarray(im.resize((ow, h), Image.BICUBIC).resize((ow, oh), Image.BICUBIC))
    v_first = np.asarray(im.resize((w, oh), Image.BICUBIC).resize((ow, oh), Image.BICUBIC))
    run = jax.jit(resize_bicubic_pil, static_argnums=(1, 2))
    np.testing.assert_array_equal(np.asarray(run(jnp.asarray(x[None]), out, "horizontal"))[0], h_first)
    np.testing.assert_array_equal(np.asarray(run(jnp.asarray(x[None]), out, "vertical"))[0], v_first)


@pytest.mark.parametrize("hw", [(240, 320), (480, 640), (100, 700), (384, 384), (384, 383)])
def test_jax_path_bit_identical_to_host(hw):
    """Landscape frames (every common video size): Pillow 13 also resizes horizontally first."""
    x = frames(*hw)
    got = np.asarray(jax.jit(siglip_preprocess)(jnp.asarray(x)))
    np.testing.assert_array_equal(got, siglip_preprocess_np(x))


@pytest.mark.parametrize("hw", [(480, 360), (640, 480)])
def test_jax_path_on_portrait_frames(hw):
    """On these, Pillow 13 runs the vertical pass first. The default pass_order="auto" follows the
    installed Pillow and is exact. The Pillow <= 12 order stays within the documented bound (pure noise: < 24/255)."""
    x = frames(*hw, n=1)
    host = siglip_preprocess_np(x)
    np.testing.assert_array_equal(np.asarray(siglip_preprocess(jnp.asarray(x))), host)
    old = np.asarray(siglip_preprocess(jnp.asarray(x), pass_order="horizontal"))
    assert np.abs(old - host).max() <= 2 * 24 / 255


@pytest.mark.parametrize(
    "hwo", [(300, 200, 100, 100), (300, 200, 100, 101), (301, 200, 100, 100), (64, 76, 6, 46), (60, 20, 10, 10),
            (20, 30, 10, 15)]
)
def test_pass_order_rule_matches_installed_pillow(hwo):
    """Borderline shapes of the pass-order rule (pillow_vertical_first) against PIL itself."""
    h, w, oh, ow = hwo
    x = frames(h, w, n=1, seed=3)
    want = np.asarray(Image.fromarray(x[0]).resize((ow, oh), Image.BICUBIC))
    np.testing.assert_array_equal(np.asarray(resize_bicubic_pil(jnp.asarray(x), (oh, ow)))[0], want)


def test_normalisation_is_the_reference_arithmetic(request):
    u8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
    ref = ((u8.astype(np.float64) * (1 / 255)).astype(np.float32) - np.float32(0.5)) / np.float32(0.5)
    np.testing.assert_array_equal(normalize_uint8_np(u8), ref)
    np.testing.assert_array_equal(np.asarray(normalize_uint8(jnp.asarray(u8))), ref)
    golden = os.environ.get("VLM3R_GOLDEN") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "golden")
    lut_file = os.path.join(golden, "vlm3r_tiny", "inputs.npz")
    if os.path.exists(lut_file):  # the official processor's exact uint8 -> float table
        np.testing.assert_array_equal(ref[0, ..., 0].reshape(-1), np.load(lut_file)["pixel_value_lut"])


def test_float_frames_and_errors():
    x = frames(48, 64)
    np.testing.assert_array_equal(
        np.asarray(siglip_preprocess(jnp.asarray(x, jnp.float32), 32)), np.asarray(siglip_preprocess(jnp.asarray(x), 32))
    )
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        siglip_preprocess(jnp.zeros((2, 3, 48, 64), jnp.uint8))
    with pytest.raises(TypeError, match="uint8"):
        siglip_preprocess_np(x.astype(np.float32))
    with pytest.raises(ValueError, match="pass_order"):
        resize_bicubic_pil(jnp.asarray(x), 32, "diagonal")


@pytest.mark.torch
def test_resize_bilinear_matches_torch():
    """The CUT3R view: F.interpolate(384 -> 432, bilinear, align_corners=False)."""
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(0).uniform(-1, 1, (2, 384, 384, 3)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(432, 432), mode="bilinear",
                         align_corners=False).permute(0, 2, 3, 1).numpy()
    got = np.asarray(resize_bilinear(jnp.asarray(x), (432, 432)))
    assert np.abs(got - want).max() <= 1e-6
