"""SigLIP frame preprocessing, as the reference ``SigLipImageProcessor`` does it.

The reference (LLaVA-NeXT ``siglip_encoder.SigLipImageProcessor``) squashes every frame to
``size x size`` with PIL BICUBIC (no crop, no padding), rescales by 1/255 (float64, then cast to
float32) and normalises with mean 0.5, std 0.5 in float32, giving values in [-1, 1]. Two
implementations, both NHWC and both bit-identical to the reference on uint8 frames:

* :func:`siglip_preprocess_np` - host side (Grain workers): PIL itself does the resize.
* :func:`siglip_preprocess` - jit-able on device batches: a restatement of Pillow's 8-bit
  resampler (``libImaging/Resample.c``: Keys bicubic ``a = -0.5`` with the support widened by
  the downscale factor, coefficients normalised and quantised to 22-bit fixed point, horizontal
  pass first, each pass rounded and clipped to uint8) in int32 arithmetic, so it reproduces PIL
  exactly; the rescale/normalise uses a 256-entry table computed with the reference's
  arithmetic. Pillow 13 sometimes runs the vertical pass first (portrait frames); ``pass_order="auto"``
  follows the installed Pillow, see :func:`resize_bicubic_pil`.

Frames already at ``size`` skip the resize (as PIL does).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vlm3r_jax.models.interpolate import interpolate_bilinear

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images


def _check_frames(frames: np.ndarray | jax.Array) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"expected RGB frames shaped [N, H, W, 3], got {tuple(frames.shape)}; "
            "convert grayscale/RGBA frames to RGB first"
        )


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def normalize_uint8_np(
    frames: np.ndarray, mean: Sequence[float] = SIGLIP_MEAN, std: Sequence[float] = SIGLIP_STD
) -> np.ndarray:
    """uint8 [..., 3] -> float32, with the reference's arithmetic: rescale in float64, cast
    to float32, then ``(x - mean) / std`` in float32. uint8 input goes through a 256-entry table
    built with that same arithmetic (bit-identical, ~3x faster on video batches)."""
    if frames.dtype == np.uint8:
        lut = _normalize_lut(tuple(float(m) for m in mean), tuple(float(s) for s in std))
        return lut[frames, np.arange(3)] if lut.ndim == 2 else lut[frames]
    x = (frames.astype(np.float64) * (1.0 / 255.0)).astype(np.float32)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


@functools.lru_cache(maxsize=8)
def _normalize_lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[256] (equal channels) or [256, 3] float32 table of :func:`normalize_uint8_np`."""
    x = (np.arange(256, dtype=np.float64) * (1.0 / 255.0)).astype(np.float32)[:, None]
    lut = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return lut[:, 0].copy() if len(set(mean)) == 1 and len(set(std)) == 1 else lut


def siglip_preprocess_np(
    frames: np.ndarray,
    size: int | tuple[int, int] = 384,
    mean: Sequence[float] = SIGLIP_MEAN,
    std: Sequence[float] = SIGLIP_STD,
) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, size, size, 3] in [-1, 1] (PIL BICUBIC squash)."""
    frames = np.asarray(frames)
    _check_frames(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"expected uint8 frames (0..255), got {frames.dtype}; decode videos to uint8 RGB first")
    h, w = _hw(size)
    if frames.shape[1:3] != (h, w):
        frames = np.stack(
            [np.asarray(Image.fromarray(f).resize((w, h), resample=Image.BICUBIC)) for f in frames]
        )
    return normalize_uint8_np(frames, mean, std)


# --- Pillow's 8-bit bicubic resampler, restated for jax -------------------------------------


def _pil_bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def pil_bicubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for BICUBIC, one axis:
    source indices int32 [out, K] and fixed-point weights int32 [out, K] (zero-padded).

    Every step is the same IEEE double arithmetic as the C code, so the integer weights match."""
    scale = float(np.float32(in_size)) / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    idx = np.zeros((out_size, ksize), np.int64)
    kk = np.zeros((out_size, ksize), np.int64)
    ss = 1.0 / filterscale
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = _pil_bicubic((np.arange(xmax) + xmin - center + 0.5) * ss)
        ww = 0.0
        for v in w:  # sequential sum, as in C
            ww += float(v)
        if ww != 0.0:
            w = w / ww
        scaled = w * (1 << _PRECISION_BITS)
        kk[xx, :xmax] = np.where(scaled < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled))
        idx[xx, :xmax] = xmin + np.arange(xmax)
        idx[xx, xmax:] = xmin  # weight 0: any valid index
    return idx.astype(np.int32), kk.astype(np.int32)


def _pil_pass(x: jax.Array, axis: int, idx: np.ndarray, kk: np.ndarray) -> jax.Array:
    """One 8-bit resampling pass along ``axis`` of int32 pixels; returns int32 in [0, 255]."""
    shape = [1] * x.ndim
    shape[axis] = idx.shape[0]
    acc = jnp.full((), 1 << (_PRECISION_BITS - 1), jnp.int32)
    for j in range(idx.shape[1]):
        acc = acc + jnp.take(x, jnp.asarray(idx[:, j]), axis=axis) * jnp.asarray(kk[:, j]).reshape(shape)
    # clip8: arithmetic shift, then clamp (Pillow's lookup table).
    return jnp.clip(jnp.right_shift(acc, _PRECISION_BITS), 0, 255)


PASS_ORDERS = ("auto", "horizontal", "vertical")


def _pillow_major() -> int:
    import PIL

    try:
        return int(PIL.__version__.split(".")[0])
    except ValueError:  # unusual version string: assume the newest behaviour
        return 99


def pillow_vertical_first(in_hw: tuple[int, int], out_hw: tuple[int, int], pillow_major: int | None = None) -> bool:
    """Whether Pillow runs the vertical pass first for this resize.

    Pillow <= 12 always resizes horizontally first. Pillow 13.0's ``ImagingResampleInner`` goes
    vertical-first when the height shrinks by more than twice the width's shrink:
    ``h - oh > 0 and h - oh > 2 * (w - ow)``. We read this rule from the installed 13.0 binary and
    checked it against Image.resize on 400 random shapes.
    """
    (h, w), (oh, ow) = in_hw, out_hw
    major = _pillow_major() if pillow_major is None else pillow_major
    if major < 13 or h == oh or w == ow:
        return False
    return h - oh > 0 and h - oh > 2 * (w - ow)


def resize_bicubic_pil(frames: jax.Array, size: int | tuple[int, int], pass_order: str = "auto") -> jax.Array:
    """uint8 [N, H, W, C] -> uint8 [N, h, w, C], bit-identical to ``PIL.Image.resize(BICUBIC)``
    (integer arithmetic, so no dtype or device can change the result). Jit-able.

    Pillow rounds to uint8 between its two passes, so the order of the passes matters.
    ``pass_order="auto"`` follows the installed Pillow (:func:`pillow_vertical_first`), the same as
    the host path. ``"horizontal"`` is the order of Pillow <= 12, which the reference environment
    used. Where the orders differ, the outputs differ by at most 2/255 on smooth frames and up to
    about 23/255 on pure noise (docs/vision.md)."""
    if pass_order not in PASS_ORDERS:
        raise ValueError(f"pass_order must be one of {PASS_ORDERS}, got {pass_order!r}")
    h, w = _hw(size)
    x = frames.astype(jnp.int32)
    if pass_order == "auto":
        pass_order = "vertical" if pillow_vertical_first(tuple(x.shape[1:3]), (h, w)) else "horizontal"
    passes = [(2, w), (1, h)] if pass_order == "horizontal" else [(1, h), (2, w)]
    for axis, out in passes:
        if x.shape[axis] != out:  # Pillow skips an axis whose size does not change
            x = _pil_pass(x, axis, *pil_bicubic_taps(x.shape[axis], out))
    return x.astype(jnp.uint8)


def normalize_uint8(
    frames: jax.Array, mean: Sequence[float] = SIGLIP_MEAN, std: Sequence[float] = SIGLIP_STD
) -> jax.Array:
    """uint8 [..., C] -> float32 via a per-channel 256-entry table built with the reference's
    arithmetic (:func:`normalize_uint8_np`), so the values are bit-identical."""
    c = frames.shape[-1]
    lut = normalize_uint8_np(np.repeat(np.arange(256, dtype=np.uint8)[:, None], c, axis=1), mean, std)  # [256, C]
    lut = jnp.asarray(lut)
    return lut[frames.astype(jnp.int32), jnp.arange(c)]


def siglip_preprocess(
    frames: jax.Array,
    size: int | tuple[int, int] = 384,
    mean: Sequence[float] = SIGLIP_MEAN,
    std: Sequence[float] = SIGLIP_STD,
    pass_order: str = "auto",
) -> jax.Array:
    """uint8 [N, H, W, 3] -> float32 [N, size, size, 3] in [-1, 1]; jit-able and bit-identical
    to the reference processor (see :func:`resize_bicubic_pil` for ``pass_order``). Float input
    holding 0..255 values is rounded to uint8 first (PIL only sees uint8 too)."""
    _check_frames(frames)
    if jnp.issubdtype(frames.dtype, jnp.floating):
        frames = jnp.clip(jnp.round(frames), 0, 255)
    elif not jnp.issubdtype(frames.dtype, jnp.integer):
        raise TypeError(f"expected uint8 frames (0..255), got {frames.dtype}")
    frames = frames.astype(jnp.uint8)
    h, w = _hw(size)
    if tuple(frames.shape[1:3]) != (h, w):
        frames = resize_bicubic_pil(frames, (h, w), pass_order)
    return normalize_uint8(frames, mean, std)


# VLM-3R's 384 -> 432 CUT3R view: torch ``F.interpolate(mode="bilinear", align_corners=False)``,
# half-pixel taps without antialiasing, exact to torch (see vlm3r_jax.models.interpolate).
resize_bilinear = interpolate_bilinear
