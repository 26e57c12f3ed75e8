"""Online mode: frames arrive one at a time (a camera, a robot), questions come at any moment.

    stream = model.stream(StreamConfig(max_frames=32, select="uniform"))
    for frame in camera:                     # uint8 [H, W, 3], any size
        stream.push(frame)                   # constant cost per frame
        if user_asked:
            print(stream.answer("How far is the door from me?"))

VLM-3R's geometry encoder (CUT3R) is recurrent: its state absorbs one frame at a time, and in
the offline model the frames meet *only* through that state (SigLIP, the fusion block and the
projector are per frame). So one frame costs one CUT3R step plus one frame of SigLIP, fusion and
projector, whatever came before, and a question reuses the stored per-frame results. This is
exact: after N pushes the geometry tokens equal the offline pass over the same N frames.

What is kept (memory is bounded by ``max_frames``, never by the stream's length):
- the CUT3R carry (state tokens + pose memory: fixed size);
- per kept frame, its pooled LLM features [h, w, D] (and, with ``with_heads``, a subsampled
  point cloud, colours and camera pose for :func:`vlm3r_jax.infer.viz.render_reconstruction`).

Which frames the LLM sees (``select``):
- ``"window"``: the last ``max_frames`` frames;
- ``"uniform"``: about ``max_frames`` frames spread evenly over everything seen so far. A buffer
  of ``2 * max_frames`` slots keeps every ``s``-th frame; when it fills up, every other kept
  frame is dropped and ``s`` doubles. Frames that will not be kept skip the visual branch.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipeline.image_preprocess import siglip_preprocess_np
from vlm3r_jax.infer.engine import VLM3REngine

SELECT = ("uniform", "window")


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """``max_frames``: frames given to the LLM per question (and the memory bound).
    ``select``: ``"uniform"`` or ``"window"`` (see the module docstring).
    ``with_heads``: also run CUT3R's point/pose heads per frame (for pictures; costs time).
    ``points_stride``: keep every k-th pixel's 3D point per kept frame (with heads)."""

    max_frames: int = 32
    select: str = "uniform"
    with_heads: bool = False
    points_stride: int = 4

    def __post_init__(self) -> None:
        if self.max_frames < 1:
            raise ValueError(f"StreamConfig.max_frames must be >= 1, got {self.max_frames}")
        if self.select not in SELECT:
            raise ValueError(f"StreamConfig.select must be one of {SELECT}, got {self.select!r}")
        if self.points_stride < 1:
            raise ValueError(f"StreamConfig.points_stride must be >= 1, got {self.points_stride}")


class FrameBuffer:
    """Bounded store of per-frame entries under a selection policy (host side, no jax)."""

    def __init__(self, max_frames: int, select: str):
        self.max_frames = max_frames
        self.select = select
        self.stride = 1
        cap = max_frames if select == "window" else 2 * max_frames
        self.entries: collections.deque[tuple[int, Any]] = collections.deque(
            maxlen=max_frames if select == "window" else None)
        self.capacity = cap

    def wants(self, index: int) -> bool:
        """Will frame ``index`` be stored? (Lets the caller skip work for frames that won't.)"""
        return self.select == "window" or index % self.stride == 0

    def add(self, index: int, entry: Any) -> None:
        if not self.wants(index):
            return
        self.entries.append((index, entry))
        if self.select == "uniform" and len(self.entries) > self.capacity:
            self.stride *= 2
            kept = [(i, e) for i, e in self.entries if i % self.stride == 0]
            self.entries = collections.deque(kept)

    def chosen(self) -> list[tuple[int, Any]]:
        """The entries a question sees, oldest first (at most ``max_frames``)."""
        items = list(self.entries)
        if len(items) <= self.max_frames:
            return items
        pick = np.linspace(0, len(items) - 1, self.max_frames).round().astype(int)
        return [items[i] for i in pick]

    def __len__(self) -> int:
        return len(self.entries)


class VideoStream:
    """Created by :meth:`VLM3RModel.stream`; see the module docstring."""

    def __init__(self, engine: VLM3REngine, config: StreamConfig | None = None):
        self.engine = engine
        self.config = config or StreamConfig()
        self.reset()

    def reset(self) -> None:
        """Start a new video: fresh CUT3R state, no stored frames."""
        m = self.engine
        self.num_frames = 0
        self.buffer = FrameBuffer(self.config.max_frames, self.config.select)
        self._carry = _init_carry(m.graphdef, m.params) if m.cfg.geometry is not None else None

    # --- frames -----------------------------------------------------------------------------------
    def _prepare(self, frame: Any) -> jax.Array:
        size = self.engine.cfg.vision.image_size
        x = np.asarray(frame)
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"push() takes one RGB frame [H, W, 3], got shape {x.shape}")
        if x.dtype == np.uint8:
            x = siglip_preprocess_np(x[None], size)[0]
        elif x.shape[:2] != (size, size):
            raise ValueError(f"a float frame must already be SigLIP-normalised at {size}x{size}, got {x.shape}; "
                             "pass the uint8 frame instead and it is resized here")
        return jnp.asarray(x, jnp.float32)[None]

    def push(self, frame: Any) -> dict[str, jax.Array]:
        """Adds one frame (uint8 [H, W, 3], or float [S, S, 3] already SigLIP-normalised).

        Returns this frame's outputs as device arrays (no host copy unless you read them):
        ``geometry_tokens`` [G, Dg] (what the fusion attends to) and, with ``with_heads``,
        ``camera_c2w`` [4, 4], ``pts3d`` [h, w, 3] and ``conf`` [h, w] (subsampled)."""
        m = self.engine
        x = self._prepare(frame)
        keep = self.buffer.wants(self.num_frames)
        self._carry, out = _frame_step(m.graphdef, m.params, self._carry, x, visual=keep,
                                       heads=self.config.with_heads, stride=self.config.points_stride)
        if keep:
            entry = {"pooled": out.pop("pooled")}
            if self.config.with_heads:
                entry.update({k: out[k] for k in ("camera_c2w", "pts3d", "conf", "rgb")})
            self.buffer.add(self.num_frames, entry)
        self.num_frames += 1
        return out

    def extend(self, frames: Any) -> None:
        """Pushes every frame of uint8 [N, H, W, 3] (or a video path's decoded frames)."""
        for f in frames:
            self.push(f)

    @property
    def kept_frame_indices(self) -> list[int]:
        """Frames held in memory (at most ``2 * max_frames`` for ``uniform``)."""
        return [i for i, _ in self.buffer.entries]

    @property
    def selected_frame_indices(self) -> list[int]:
        """Frames the next question will see (at most ``max_frames``)."""
        return [i for i, _ in self.buffer.chosen()]

    # --- questions --------------------------------------------------------------------------------
    def answer(self, question: str, max_new_tokens: int = 64, *, temperature: float = 0.0, top_p: float = 1.0,
               top_k: int = 0, repetition_penalty: float = 1.0, seed: int = 0) -> str:
        """Answers over the frames chosen by the policy (``select``) among those seen so far."""
        if self.num_frames == 0:
            raise ValueError("no frames pushed yet: call push(frame) first")
        m = self.engine
        chosen = self.buffer.chosen()
        pooled = jnp.stack([e["pooled"] for _, e in chosen])[None]  # [1, F, h, w, D]
        ids = m.prompt_ids(question)
        m.check(ids[None], None, num_frames=pooled.shape[1])
        embeds, mask = _prefill_pooled(m.graphdef, m.params, jnp.asarray(ids[None]), pooled)
        out = m.decode(embeds, mask, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                        top_k=top_k, repetition_penalty=repetition_penalty, seed=seed)
        n = int(out.num_tokens[0])
        return m.tokenizer.decode([int(t) for t in np.asarray(out.tokens[0, :n])], skip_special_tokens=True).strip()

    def reconstruction(self) -> dict[str, np.ndarray]:
        """The kept frames' points for :func:`vlm3r_jax.infer.viz.render_reconstruction`
        (needs ``StreamConfig(with_heads=True)``): points [P, 3], colors [P, 3] in [0, 1],
        conf [P], camera_c2w [K, 4, 4], frame_index [K]."""
        if not self.config.with_heads:
            raise ValueError("reconstruction() needs StreamConfig(with_heads=True)")
        items = list(self.buffer.entries)
        if not items:
            raise ValueError("no frames pushed yet")
        get = lambda k: np.stack([np.asarray(e[k]) for _, e in items])  # noqa: E731
        return {"points": get("pts3d").reshape(-1, 3), "colors": get("rgb").reshape(-1, 3),
                "conf": get("conf").reshape(-1), "camera_c2w": get("camera_c2w"),
                "frame_index": np.asarray([i for i, _ in items])}


# --- pure jitted pieces (module level: one compilation per model architecture) --------------------
@functools.partial(jax.jit, static_argnames=("graphdef",))
def _init_carry(graphdef: nnx.GraphDef, params: nnx.State):
    return nnx.merge(graphdef, params).spatial_tower.init_carry(1)


@functools.partial(jax.jit, static_argnames=("graphdef", "visual", "heads", "stride"))
def _frame_step(graphdef: nnx.GraphDef, params: nnx.State, carry: Any, frame: jax.Array, *, visual: bool,
                heads: bool, stride: int) -> tuple[Any, dict[str, jax.Array]]:
    """frame [1, S, S, 3] -> (carry', outputs of this frame). The only state is ``carry``."""
    model = nnx.merge(graphdef, params)
    out: dict[str, jax.Array] = {}
    geo = None
    if model.spatial_tower is not None:
        tower = model.spatial_tower
        x = model.geometry_input(frame)
        feat, pos = tower.encode(x)
        carry, res = tower.step(carry, feat, pos, tuple(x.shape[1:3]) if heads else None)
        geo = model.select_geometry(res[f"dec_img_layer{tower.cfg.dec_depth}"])  # [1, G, Dg]
        out["geometry_tokens"] = geo[0]
        if heads:
            out["camera_c2w"] = res["camera_c2w"][0]
            out["pts3d"] = res["pts3d_in_other_view"][0, ::stride, ::stride]
            out["conf"] = res["conf"][0, ::stride, ::stride]
            out["rgb"] = (x[0, ::stride, ::stride].astype(jnp.float32) + 1.0) / 2.0
    if visual:
        out["pooled"] = model.pooled_frames(frame[None], None if geo is None else geo[None])[0, 0]
    return carry, out


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _prefill_pooled(graphdef: nnx.GraphDef, params: nnx.State, ids: jax.Array, pooled: jax.Array):
    """ids [1, T] with one placeholder, pooled [1, F, h, w, D] -> (inputs_embeds, mask)."""
    model = nnx.merge(graphdef, params)
    sp = model.embed_with_video(ids, model.layout(pooled))
    return sp["inputs_embeds"], sp["attention_mask"]
