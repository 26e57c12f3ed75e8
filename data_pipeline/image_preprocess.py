"""SigLIP frame preprocessing, as the reference ``SigLipImageProcessor`` does it.

The reference squashes every frame to ``size x size`` with PIL BICUBIC (no crop, no
padding), rescales by 1/255 and normalises with mean 0.5, std 0.5, giving values in
[-1, 1]. Two implementations:

* :func:`siglip_preprocess_np` - host side (Grain workers), uses PIL so the resampling is the
  reference's own; bit-compatible rescale/normalise arithmetic.
* :func:`siglip_preprocess` - jit-able on device batches (``jax.image.resize`` bicubic with
  antialiasing); close to PIL but not bit-identical (bound measured in the tests).

Both are NHWC. Frames already at ``size`` skip the resize (as PIL does), so they match exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def _check_frames(frames: np.ndarray | jax.Array) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"expected RGB frames shaped [N, H, W, 3], got {tuple(frames.shape)}; "
            "convert grayscale/RGBA frames to RGB first"
        )


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
    h, w = (size, size) if isinstance(size, int) else size
    if frames.shape[1:3] != (h, w):
        frames = np.stack(
            [np.asarray(Image.fromarray(f).resize((w, h), resample=Image.BICUBIC)) for f in frames]
        )
    return normalize_uint8_np(frames, mean, std)


def siglip_preprocess(
    frames: jax.Array,
    size: int | tuple[int, int] = 384,
    mean: Sequence[float] = SIGLIP_MEAN,
    std: Sequence[float] = SIGLIP_STD,
) -> jax.Array:
    """uint8 or float (0..255) [N, H, W, 3] -> float32 [N, size, size, 3]; jit-able."""
    _check_frames(frames)
    h, w = (size, size) if isinstance(size, int) else size
    x = frames.astype(jnp.float32)
    if tuple(x.shape[1:3]) != (h, w):
        x = jax.image.resize(x, (x.shape[0], h, w, 3), method="bicubic", antialias=True)
        # PIL rounds and clips to uint8 after resampling.
        x = jnp.clip(jnp.round(x), 0.0, 255.0)
    x = x * jnp.float32(1.0 / 255.0)
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[N, H, W, C] -> [N, h, w, C], half-pixel bilinear without antialiasing, i.e. PyTorch
    ``F.interpolate(mode="bilinear", align_corners=False)`` (VLM-3R's 384 -> 432 CUT3R view)."""
    n, _, _, c = x.shape
    return jax.image.resize(x, (n, size[0], size[1], c), method="linear", antialias=False)
