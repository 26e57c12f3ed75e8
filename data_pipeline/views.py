"""The two per-frame views the model consumes.

* SigLIP view: :func:`data_pipeline.image_preprocess.siglip_preprocess_np` (PIL bicubic squash to
  ``siglip_size``, rescale, mean/std 0.5) -> float32 [N, S, S, 3] in [-1, 1].
* Geometry (CUT3R) view: the reference feeds CUT3R the *SigLIP-normalised* frames resized with
  ``F.interpolate(mode="bilinear", align_corners=False)`` (no antialias) to 432 x 432. Done here in
  numpy with the same half-pixel rule so Grain workers produce it on the host;
  ``image_preprocess.resize_bilinear`` is the on-device equivalent.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipeline.image_preprocess import siglip_preprocess_np


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """``geometry_size=None`` skips the geometry view (the model can then resize on device)."""

    siglip_size: int = 384
    geometry_size: int | None = 432


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # PyTorch's half-pixel source coordinate in float32, clamped at 0 (align_corners=False).
    # PyTorch: float32 scale, ``scale * (i + 0.5) - 0.5`` evaluated in double, stored as float32.
    scale = np.float64(np.float32(n_in) / np.float32(n_out))
    src = np.maximum(scale * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5, 0.0).astype(np.float32)
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, i1, np.float32(1) - lam1, lam1


def resize_bilinear_np(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float [N, H, W, C] -> float32 [N, h, w, C]; PyTorch bilinear, align_corners=False, no antialias
    (float32 weights, width first then height, as PyTorch's CPU kernel)."""
    x = np.asarray(x, np.float32)
    h, w = size
    if x.shape[1:3] == (h, w):
        return x
    n, src_h, src_w, ch = x.shape
    r0, r1, ry0, ry1 = _axis_weights(src_h, h)
    c0, c1, cx0, cx1 = _axis_weights(src_w, w)
    # Separable: the width pass on every source row, then the height pass; the same products
    # and sums as PyTorch's 4-tap kernel (width first), so results agree to 1 ulp. In place on
    # [N, rows, w * C] buffers: no transposed copies, and the output comes out contiguous.
    xw = np.take(x, c0, axis=2).reshape(n, src_h, w * ch)
    xw *= np.repeat(cx0, ch)
    tap = np.take(x, c1, axis=2).reshape(n, src_h, w * ch)
    tap *= np.repeat(cx1, ch)
    xw += tap
    out = np.take(xw, r0, axis=1)
    out *= ry0[:, None]
    tap = np.take(xw, r1, axis=1)
    tap *= ry1[:, None]
    out += tap
    return out.reshape(n, h, w, ch)


def siglip_view(frames: np.ndarray, cfg: ViewConfig = ViewConfig()) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, S, S, 3] in [-1, 1]."""
    return siglip_preprocess_np(frames, cfg.siglip_size)


def geometry_view(siglip: np.ndarray, cfg: ViewConfig = ViewConfig()) -> np.ndarray | None:
    """SigLIP view [N, S, S, 3] -> float32 [N, G, G, 3] (or None when disabled)."""
    if cfg.geometry_size is None:
        return None
    g = int(cfg.geometry_size)
    return resize_bilinear_np(siglip, (g, g))


def make_views(frames: np.ndarray, cfg: ViewConfig = ViewConfig()) -> dict[str, np.ndarray]:
    """``{"frames": [N,S,S,3], "geometry_frames": [N,G,G,3]}`` (the second only when enabled)."""
    s = siglip_view(frames, cfg)
    out = {"frames": s}
    g = geometry_view(s, cfg)
    if g is not None:
        out["geometry_frames"] = g
    return out
