"""A picture of what the geometry encoder reconstructed: the point cloud (top-down and
perspective), the camera path with frame numbers, a strip of the frames, and the question and
answer as a caption. Input is the dict of :meth:`VLM3RModel.reconstruct` or
:meth:`VideoStream.reconstruction`.

CUT3R works in OpenCV camera axes (x right, y down, z forward), in the first camera's frame:
"top-down" therefore plots x against z, looking along -y (from above when the first camera
is level).
"""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np


def _select_points(rec: dict[str, np.ndarray], max_points: int, conf_quantile: float,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    pts = np.asarray(rec["points"], np.float32).reshape(-1, 3)
    col = np.clip(np.asarray(rec["colors"], np.float32).reshape(-1, 3), 0.0, 1.0)
    conf = np.asarray(rec.get("conf", np.ones(len(pts))), np.float32).reshape(-1)
    ok = np.all(np.isfinite(pts), axis=1)
    if ok.any() and conf_quantile > 0:
        ok &= conf >= np.quantile(conf[ok], conf_quantile)
    pts, col = pts[ok], col[ok]
    if len(pts) > max_points:
        pick = np.random.default_rng(seed).choice(len(pts), max_points, replace=False)
        pts, col = pts[pick], col[pick]
    return pts, col


def render_reconstruction(rec: dict[str, Any], path: str | None = None, *, question: str = "", answer: str = "",
                          max_points: int = 20000, conf_quantile: float = 0.3, max_thumbs: int = 8) -> Any:
    """Draws the picture; saves it to ``path`` (PNG/PDF/SVG by extension) when given.

    rec: ``points`` [P, 3], ``colors`` [P, 3] in [0, 1], optional ``conf`` [P], ``camera_c2w``
    [F, 4, 4], optional ``frame_index`` [F] (labels; default 0..F-1) and ``frames`` uint8
    [F, H, W, 3] (the strip). Points below the ``conf_quantile`` of confidence are dropped and at
    most ``max_points`` are drawn. Returns the matplotlib figure."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    c2w = np.asarray(rec["camera_c2w"], np.float32)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"camera_c2w must be [F, 4, 4], got {c2w.shape}")
    labels = np.asarray(rec.get("frame_index", np.arange(len(c2w))))
    centers = c2w[:, :3, 3]
    forward = c2w[:, :3, 2]
    pts, col = _select_points(rec, max_points, conf_quantile)
    frames = rec.get("frames")

    fig = plt.figure(figsize=(13, 7.5))
    grid = fig.add_gridspec(2 if frames is not None else 1, 2,
                            height_ratios=[1, 3.2] if frames is not None else [1])
    row = 1 if frames is not None else 0
    if frames is not None:
        strip = fig.add_subplot(grid[0, :])
        idx = np.linspace(0, len(frames) - 1, min(max_thumbs, len(frames))).round().astype(int)
        strip.imshow(np.concatenate([np.asarray(frames[i]) for i in idx], axis=1))
        w = np.asarray(frames[0]).shape[1]
        for k, i in enumerate(idx):
            strip.text(k * w + 3, 3, f"{labels[i] if i < len(labels) else i}", color="white", fontsize=8,
                       va="top", bbox=dict(facecolor="black", alpha=0.5, pad=1, lw=0))
        strip.set_axis_off()
        strip.set_title("frames", fontsize=9)

    top = fig.add_subplot(grid[row, 0])
    top.scatter(pts[:, 0], pts[:, 2], c=col, s=1.0, linewidths=0)
    top.plot(centers[:, 0], centers[:, 2], "-", color="crimson", lw=1.2)
    step = max(1, len(centers) // 12)
    top.quiver(centers[::step, 0], centers[::step, 2], forward[::step, 0], forward[::step, 2], color="crimson",
               angles="xy", scale_units="xy", scale=None, width=0.004)
    for i in range(0, len(centers), step):
        top.annotate(str(labels[i]), (centers[i, 0], centers[i, 2]), fontsize=7, color="crimson",
                     xytext=(3, 3), textcoords="offset points")
    top.set_aspect("equal", adjustable="datalim")
    top.set_xlabel("x")
    top.set_ylabel("z (forward of the first camera)")
    top.set_title("top-down: points and camera path", fontsize=9)

    persp = fig.add_subplot(grid[row, 1], projection="3d")
    # plotted as (x, z, -y) so "up" on screen is up in the scene
    persp.scatter(pts[:, 0], pts[:, 2], -pts[:, 1], c=col, s=0.6, linewidths=0, depthshade=False)
    persp.plot(centers[:, 0], centers[:, 2], -centers[:, 1], "-o", color="crimson", ms=2, lw=1.2)
    for i in range(0, len(centers), step):
        persp.text(centers[i, 0], centers[i, 2], -centers[i, 1], str(labels[i]), fontsize=7, color="crimson")
    persp.view_init(elev=25, azim=-60)
    persp.set_xlabel("x")
    persp.set_ylabel("z")
    persp.set_zlabel("up (-y)")
    persp.set_title("perspective", fontsize=9)

    caption = "\n".join(textwrap.fill(t, 150) for t in (f"Q: {question}" if question else "",
                                                         f"A: {answer}" if answer else "") if t)
    if caption:
        fig.text(0.01, 0.005, caption, fontsize=10, va="bottom", ha="left", family="monospace")
    fig.tight_layout(rect=(0, 0.07 if caption else 0, 1, 1))
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
