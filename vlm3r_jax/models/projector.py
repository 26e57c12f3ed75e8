"""LLaVA-Video multimodal projector, spatial pooling and video-token layout.

What the reference does with a video (LLaVA-NeXT ``llava_arch.py`` as vendored by VLM-3R,
``prepare_inputs_labels_for_multimodal`` with ``modalities=["video"]``):

1. ``mm_projector`` on every patch token of every frame: ``mlp2x_gelu`` = Linear(Dv, D), exact
   (erf) GELU, Linear(D, D) (``mlp{N}x_gelu`` in general; ``linear`` = one Linear).
2. ``get_2dPool``: [F, P, D] -> [F, side, side, D] (``side`` = the vision tower's default
   ``num_patches_per_side``, 27) and ``mm_spatial_pool_mode``: ``bilinear`` =
   ``F.interpolate(size=ceil(side / stride), mode="bilinear")`` (align_corners False, no
   antialias: 27 -> 14), ``average`` / ``max`` = ``avg_pool2d`` / ``max_pool2d(stride)`` (floor: 27 -> 13).
3. Layout per ``mm_patch_merge_type`` / ``mm_newline_position``: with ``spatial*`` merging,
   ``grid`` appends the learned ``image_newline`` after every row (``add_token_per_grid``:
   frame-major, row-major, [F * h * (w + 1), D] = 32 x 14 x 15 = 6720 tokens), ``frame`` after
   every frame (``add_token_per_frame``), ``one_token`` once at the end (only when the merge type
   contains ``unpad``), ``no_token`` never; ``flat`` merging just concatenates the frames.

Every number (widths, 27, stride 2, 14 x 15) comes from :class:`ProjectorConfig`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vlm3r_jax.layers import Linear
from vlm3r_jax.layers.activations import gelu_exact
from vlm3r_jax.models.interpolate import interpolate_bilinear

POOL_MODES = ("bilinear", "average", "max")
NEWLINE_POSITIONS = ("grid", "frame", "one_token", "no_token")
_MLP_RE = re.compile(r"^mlp(\d+)x_gelu$")


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    """LLaVA ``mm_*`` config fields that shape the vision tokens.

    ``num_patches_per_side`` is the side of the patch grid ``get_2dPool`` reshapes to; the
    reference takes it from the SigLIP tower's *default* config (27), not from the checkpoint.
    ``pool_stride`` is the stride ``get_2dPool`` is called with (VLM-3R calls it with its
    default 2; LLaVA-NeXT passes ``mm_spatial_pool_stride``).
    """

    projector_type: str = "mlp2x_gelu"
    mm_hidden_size: int = 1152
    hidden_size: int = 3584
    pool_mode: str = "bilinear"
    pool_stride: int = 2
    num_patches_per_side: int = 27
    patch_merge_type: str = "spatial_unpad"
    newline_position: str = "grid"

    def __post_init__(self):
        if self.projector_type not in ("linear", "identity") and not _MLP_RE.match(self.projector_type):
            raise ValueError(
                f"ProjectorConfig: unsupported mm_projector_type {self.projector_type!r}; "
                "expected 'linear', 'identity' or 'mlp<N>x_gelu'"
            )
        if self.pool_mode not in POOL_MODES:
            raise ValueError(f"ProjectorConfig: mm_spatial_pool_mode {self.pool_mode!r} not in {POOL_MODES}")
        if self.newline_position not in NEWLINE_POSITIONS:
            raise ValueError(
                f"ProjectorConfig: mm_newline_position {self.newline_position!r} not in {NEWLINE_POSITIONS}"
            )
        if self.projector_type == "identity" and self.mm_hidden_size != self.hidden_size:
            raise ValueError("ProjectorConfig: identity projector needs mm_hidden_size == hidden_size")

    @property
    def mlp_depth(self) -> int:
        """Number of Linear layers (1 for ``linear``, N for ``mlpNx_gelu``, 0 for ``identity``)."""
        if self.projector_type == "identity":
            return 0
        if self.projector_type == "linear":
            return 1
        return int(_MLP_RE.match(self.projector_type).group(1))

    @property
    def has_newline(self) -> bool:
        """The reference creates ``image_newline`` iff the merge type contains ``unpad``."""
        return "unpad" in self.patch_merge_type

    @property
    def pooled_side(self) -> tuple[int, int]:
        """Grid after pooling: ceil for bilinear, floor for average/max (torch pooling)."""
        s, k = self.num_patches_per_side, self.pool_stride
        if k <= 1:
            return s, s
        n = math.ceil(s / k) if self.pool_mode == "bilinear" else s // k
        return n, n

    def tokens_per_frame(self) -> int:
        """Video tokens per frame for ``newline_position`` (210 for LLaVA-Video: 14 x (14 + 1))."""
        h, w = self.pooled_side
        if not self.patch_merge_type.startswith("spatial"):
            return h * w
        if self.newline_position == "grid":
            return h * (w + 1)
        if self.newline_position == "frame":
            return h * w + 1
        return h * w

    def num_video_tokens(self, num_frames: int) -> int:
        """Length of the block that replaces one video placeholder (6720 for 32 frames)."""
        n = num_frames * self.tokens_per_frame()
        if self.patch_merge_type.startswith("spatial") and self.newline_position == "one_token" and self.has_newline:
            n += 1
        return n

    @classmethod
    def from_llava_config(
        cls, config: Mapping[str, Any], *, num_patches_per_side: int = 27, pool_stride: int | None = None
    ) -> ProjectorConfig:
        """From a LLaVA / VLM-3R ``config.json`` dict (``mm_*`` keys and ``hidden_size``).

        ``num_patches_per_side`` defaults to the reference tower's hard-coded 27 (quirk: it does
        not come from the checkpoint); ``pool_stride`` defaults to ``mm_spatial_pool_stride`` (2).
        """
        d = dict(config)
        missing = [k for k in ("mm_hidden_size", "hidden_size") if k not in d]
        if missing:
            raise ValueError(f"LLaVA config lacks {missing}; is this the model's config.json?")
        return cls(
            projector_type=d.get("mm_projector_type", "linear"),
            mm_hidden_size=int(d["mm_hidden_size"]),
            hidden_size=int(d["hidden_size"]),
            pool_mode=d.get("mm_spatial_pool_mode", "bilinear"),
            pool_stride=int(pool_stride if pool_stride is not None else d.get("mm_spatial_pool_stride", 2)),
            num_patches_per_side=num_patches_per_side,
            patch_merge_type=d.get("mm_patch_merge_type", "flat"),
            newline_position=d.get("mm_newline_position", "one_token"),
        )


# --- pure functions -------------------------------------------------------------------------


def pool_2d(x: jax.Array, mode: str = "bilinear", stride: int = 2) -> jax.Array:
    """``get_2dPool`` on a grid: x [F, h, w, D] -> [F, h', w', D].

    bilinear: torch ``F.interpolate(size=(ceil(h/s), ceil(w/s)), mode="bilinear")``
    (align_corners False, no antialias); average/max: ``avg_pool2d``/``max_pool2d(s)``
    (kernel = stride = s, no padding, floor)."""
    if x.ndim != 4:
        raise ValueError(f"pool_2d expects [F, h, w, D], got shape {tuple(x.shape)}")
    if mode not in POOL_MODES:
        raise ValueError(f"unknown pool mode {mode!r}; choose one of {POOL_MODES}")
    f, h, w, d = x.shape
    if stride <= 1:
        return x
    if mode == "bilinear":
        return interpolate_bilinear(x, (math.ceil(h / stride), math.ceil(w / stride)))
    oh, ow = h // stride, w // stride
    win = x[:, : oh * stride, : ow * stride].reshape(f, oh, stride, ow, stride, d)
    if mode == "max":
        return win.max(axis=(2, 4))
    acc = win.astype(jnp.promote_types(x.dtype, jnp.float32))
    return (acc.sum(axis=(2, 4)) / (stride * stride)).astype(x.dtype)


def layout_video_tokens(
    x: jax.Array,
    newline: jax.Array | None,
    *,
    newline_position: str = "grid",
    patch_merge_type: str = "spatial_unpad",
) -> jax.Array:
    """Pooled frames x [F, h, w, D] -> the token block [T, D] in the reference's order.

    ``grid``: per frame, per row: w tokens then ``newline`` (T = F*h*(w+1)); ``frame``: the
    h*w tokens of a frame then ``newline``; ``one_token``: all tokens then one ``newline`` (only
    if the merge type contains ``unpad``); ``no_token`` / ``flat`` merging: all tokens.
    Frame-major and row-major throughout."""
    if x.ndim != 4:
        raise ValueError(f"layout_video_tokens expects [F, h, w, D], got shape {tuple(x.shape)}")
    f, h, w, d = x.shape
    if not patch_merge_type.startswith("spatial") or newline_position == "no_token":
        return x.reshape(f * h * w, d)
    if newline_position not in NEWLINE_POSITIONS:
        raise ValueError(f"unknown mm_newline_position {newline_position!r}; choose one of {NEWLINE_POSITIONS}")
    if newline_position == "one_token":
        flat = x.reshape(f * h * w, d)
        if "unpad" not in patch_merge_type:
            return flat
        return jnp.concatenate([flat, _newline(newline, d, x.dtype)[None]], axis=0)
    nl = _newline(newline, d, x.dtype)
    if newline_position == "grid":
        rows = jnp.concatenate([x, jnp.broadcast_to(nl, (f, h, 1, d))], axis=2)
        return rows.reshape(f * h * (w + 1), d)
    frames = jnp.concatenate([x.reshape(f, h * w, d), jnp.broadcast_to(nl, (f, 1, d))], axis=1)
    return frames.reshape(f * (h * w + 1), d)


def _newline(newline: jax.Array | None, d: int, dtype: Any) -> jax.Array:
    if newline is None:
        raise ValueError("this mm_newline_position needs image_newline, but the model has none (merge type without 'unpad')")
    if newline.shape != (d,):
        raise ValueError(f"image_newline has shape {tuple(newline.shape)}, expected ({d},)")
    return newline.astype(dtype)


# --- module ---------------------------------------------------------------------------------


class VisionProjector(nnx.Module):
    """``mm_projector`` + ``image_newline`` + pooling/layout for video frames.

    Params: ``linears.i.{kernel,bias}`` (torch ``mm_projector.{2i}``) and ``image_newline`` [D].
    """

    def __init__(self, cfg: ProjectorConfig, *, dtype: Any = None, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        widths = [cfg.mm_hidden_size] + [cfg.hidden_size] * cfg.mlp_depth
        axes = [("embed", "mlp"), ("mlp", "embed")]
        self.linears = nnx.List(
            [
                Linear(widths[i], widths[i + 1], axes=axes[i % 2], dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                for i in range(cfg.mlp_depth)
            ]
        )
        self.image_newline = (
            nnx.Param(
                jax.random.normal(rngs.params(), (cfg.hidden_size,), param_dtype) * cfg.hidden_size**-0.5,
                logical_axes=("embed",),
            )
            if cfg.has_newline
            else None
        )

    def project(self, x: jax.Array) -> jax.Array:
        """[..., Dv] -> [..., D]; GELU (exact erf, torch ``nn.GELU()``) between Linears."""
        if x.shape[-1] != self.cfg.mm_hidden_size:
            raise ValueError(
                f"projector input width {x.shape[-1]} != mm_hidden_size {self.cfg.mm_hidden_size}"
            )
        for i, lin in enumerate(self.linears):
            if i:
                x = gelu_exact(x)
            x = lin(x)
        return x

    def pool(self, x: jax.Array) -> jax.Array:
        """[F, P, D] with P = side^2 -> [F, h', w', D] (``get_2dPool``)."""
        s = self.cfg.num_patches_per_side
        if x.ndim != 3 or x.shape[1] != s * s:
            raise ValueError(
                f"expected per-frame tokens [F, {s * s}, D] ({s}x{s} grid, num_patches_per_side={s}), "
                f"got shape {tuple(x.shape)}"
            )
        grid = x.reshape(x.shape[0], s, s, x.shape[-1])
        return pool_2d(grid, self.cfg.pool_mode, self.cfg.pool_stride)

    def layout(self, pooled: jax.Array) -> jax.Array:
        """[F, h, w, D] -> [T, D] per ``newline_position`` / ``patch_merge_type``."""
        nl = self.image_newline[...] if self.image_newline is not None else None
        return layout_video_tokens(
            pooled, nl, newline_position=self.cfg.newline_position, patch_merge_type=self.cfg.patch_merge_type
        )

    def video_tokens(self, features: jax.Array) -> jax.Array:
        """Vision features of one video [F, P, Dv] -> LLM input block [T, D]
        (project, then pool, then lay out, as the reference orders them)."""
        return self.layout(self.pool(self.project(features)))

    def __call__(self, features: jax.Array) -> jax.Array:
        return self.video_tokens(features)
