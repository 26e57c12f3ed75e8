"""``Cut3rGeometry``: the notebook-facing CUT3R handle (what ``api.load_cut3r`` returns).

    geo = Cut3rGeometry.from_pretrained(path)      # dir (config.json + model.safetensors) or .pth
    out = geo.stream(frames)                       # float [T, H, W, 3] in [-1, 1] -> dict of [T, ...]
    tok = geo.tokens(frames)                       # [T, 1 + N, D], camera token first

Streaming (one frame at a time, constant cost per frame):

    carry = geo.init_stream()
    for f in frames: carry, out = geo.step(carry, f)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlm3r_jax.convert.cut3r_ckpt import load_cut3r
from vlm3r_jax.models.cut3r.config import Cut3rConfig
from vlm3r_jax.models.cut3r.model import Carry, Cut3r, forward_fn, init_fn, step_fn
from vlm3r_jax.models.cut3r.rope2d import patch_positions, state_positions
from vlm3r_jax.models.interpolate import interpolate_bilinear
from vlm3r_jax.sharding import DEFAULT_RULES, shard_state, use_mesh

# VLM-3R resizes the SigLIP-normalised 384x384 frames to this (hard-coded in the reference).
VLM3R_CUT3R_SIZE = (432, 432)


def _check_frames(frames: Any, patch: int, batched: bool = False) -> jax.Array:
    nd = 5 if batched else 4
    shape_txt = "[B, T, H, W, 3]" if batched else "[T, H, W, 3]"
    if not hasattr(frames, "shape") or frames.ndim != nd or frames.shape[-1] != 3:
        raise ValueError(f"expected RGB frames shaped {shape_txt}, got {getattr(frames, 'shape', type(frames))}")
    if np.issubdtype(np.dtype(frames.dtype), np.integer):
        raise TypeError(
            f"frames must be float in [-1, 1], got {frames.dtype}; normalise uint8 frames first: (x / 255 - 0.5) / 0.5"
        )
    h, w = frames.shape[-3:-1]
    if 0 in frames.shape[:-1]:
        raise ValueError(f"frames shaped {tuple(frames.shape)} hold no pixels; expected {shape_txt}, each size >= 1")
    if h % patch or w % patch:
        raise ValueError(f"frame size {h}x{w} must be a multiple of the patch size {patch} (resize or crop first)")
    return jnp.asarray(frames, jnp.float32)


class Cut3rGeometry:
    """Owns the parameters and the jitted functions of one CUT3R model."""

    def __init__(self, model: Cut3r, mesh: Any = None, rules: Any = DEFAULT_RULES):
        self.cfg: Cut3rConfig = model.cfg
        self.graphdef, self.state = nnx.split(model)
        self.mesh = mesh
        self.rules = rules
        if mesh is not None:
            self.state = shard_state(self.state, mesh, rules)

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        dtype: str = "float32",
        *,
        config_overrides: Mapping[str, Any] | None = None,
        mesh: Any = None,
        rules: Any = DEFAULT_RULES,
    ) -> Cut3rGeometry:
        """``path``: a dir with config.json + model.safetensors, or a released ``.pth``."""
        model, _ = load_cut3r(path, dtype=dtype, config_overrides=config_overrides)
        return cls(model, mesh=mesh, rules=rules)

    @property
    def model(self) -> Cut3r:
        return nnx.merge(self.graphdef, self.state)

    def _run(self, fn, *args):
        if self.mesh is None:
            return fn(*args)
        with use_mesh(self.mesh, self.rules):
            return fn(*args)

    # --- whole videos -------------------------------------------------------------------------
    def stream_batch(self, frames: Any, with_heads: bool = True) -> dict[str, jax.Array]:
        """frames: [B, T, H, W, 3] in [-1, 1] -> dict of [B, T, ...] (jax arrays)."""
        x = _check_frames(frames, self.cfg.patch_size, batched=True)
        return self._run(functools.partial(_rollout, self.graphdef, with_heads=with_heads), self.state, x)

    def stream(self, frames: Any, with_heads: bool = True) -> dict[str, np.ndarray]:
        """frames: float [T, H, W, 3] in [-1, 1] (one video, one recurrent sequence) -> dict of
        stacked per-frame numpy arrays named and shaped as the golden ``outputs.npz``
        (pts3d_in_self_view [T, H, W, 3], conf_self [T, H, W], rgb, camera_pose [T, 7],
        pts3d_in_other_view, conf, camera_c2w [T, 4, 4], pts3d_world_from_pose, enc_feat [T, N, De],
        global_img_feat [T, 1, De], pose_token_in [T, 1, Dd], retrieved_pose [T-1, 1, Dd],
        dec_img_layer{1..L} [T, 1+N, Dd], dec_pose_token_out [T, 1, Dd], dec_img_tokens_out [T, N, Dd],
        state_after_frame [T, S, Dd], mem_after_frame [T, M, 2Dd], plus enc_pos, state_pos,
        state_init, mem_init)."""
        x = _check_frames(frames, self.cfg.patch_size)
        out = self.stream_batch(x[None], with_heads=with_heads)
        res = {k: np.asarray(v[0]) for k, v in out.items()}
        res["retrieved_pose"] = res["retrieved_pose"][1:]
        p = self.cfg.patch_size
        res["enc_pos"] = np.asarray(patch_positions(x.shape[1] // p, x.shape[2] // p), np.int64)[None]
        res["state_pos"] = np.asarray(state_positions(self.cfg.state_size, self.cfg.state_pe), np.int64)[None]
        carry = self.init_stream()
        res["state_init"] = np.asarray(carry.state)
        res["mem_init"] = np.asarray(carry.mem)
        return res

    def tokens(self, frames: Any) -> np.ndarray:
        """frames: float [T, H, W, 3] in [-1, 1] -> [T, 1 + N, Dd]: camera token, then the patch
        tokens of the last (normed) decoder layer - the key/value input of VLM-3R's fusion."""
        x = _check_frames(frames, self.cfg.patch_size)
        return np.asarray(self._run(functools.partial(_tokens, self.graphdef), self.state, x[None])[0])

    def tokens_from_siglip_pixels(self, pixels: Any, size: tuple[int, int] = VLM3R_CUT3R_SIZE) -> np.ndarray:
        """VLM-3R's call: SigLIP-normalised frames [T, 384, 384, 3] -> bilinear (half-pixel, no
        antialias) resize to 432x432 -> :meth:`tokens` [T, 730, Dd]."""
        x = jnp.asarray(pixels, jnp.float32)
        if tuple(x.shape[1:3]) != tuple(size):
            x = interpolate_bilinear(x, size)
        return self.tokens(x)

    # --- streaming ----------------------------------------------------------------------------
    def init_stream(self, batch: int = 1) -> Carry:
        """Frame-0 carry (initial state tokens and pose memory) for :meth:`step`."""
        return self._run(functools.partial(_init, self.graphdef, batch=batch), self.state)

    def step(self, carry: Carry, frame: Any, with_heads: bool = True) -> tuple[Carry, dict[str, jax.Array]]:
        """Advances the recurrence by one frame. frame: [H, W, 3] or [B, H, W, 3] float in [-1, 1]
        -> (carry', outputs of this frame, each [B, ...])."""
        x = jnp.asarray(frame, jnp.float32)
        if x.ndim == 3:
            x = x[None]
        _check_frames(x, self.cfg.patch_size)
        return self._run(functools.partial(_step, self.graphdef, with_heads=with_heads), self.state, carry, x)


# Module-level jitted functions with ``graphdef`` static: one compilation per architecture,
# shared by every handle of it (the convention of every inference handle).
@functools.partial(jax.jit, static_argnames=("graphdef", "with_heads"))
def _rollout(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, *, with_heads: bool) -> dict[str, jax.Array]:
    return forward_fn(graphdef, with_heads=with_heads)(state, images)


@functools.partial(jax.jit, static_argnames=("graphdef", "batch"))
def _init(graphdef: nnx.GraphDef, state: nnx.State, *, batch: int) -> Carry:
    return init_fn(graphdef)(state, batch)


@functools.partial(jax.jit, static_argnames=("graphdef", "with_heads"))
def _step(graphdef: nnx.GraphDef, state: nnx.State, carry: Carry, image: jax.Array, *,
          with_heads: bool) -> tuple[Carry, dict[str, jax.Array]]:
    return step_fn(graphdef, with_heads=with_heads)(state, carry, image)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _tokens(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array) -> jax.Array:
    # only the last decoder layer leaves the device (the scan's other outputs are dead code)
    return nnx.merge(graphdef, state).tokens(images)
