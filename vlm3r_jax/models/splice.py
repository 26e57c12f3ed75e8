"""Splice video embeddings into embedded text at the single placeholder of each row.

The reference replaces the one ``<image>`` token (id -200) of each prompt with the video's
``F * rows * (cols + 1)`` embeddings, gives them label -100 and numbers positions 0..L-1
over the result. This is the same operation as one static-shape gather, so it jits with a
fixed output length ``T - 1 + V`` for a batch of right-padded rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IGNORE_INDEX = -100


def placeholder_positions(input_ids: np.ndarray | jax.Array, video_token_id: int) -> np.ndarray:
    """Host-side check that every row holds exactly one placeholder; returns positions [B].

    Raises a ValueError naming the offending rows (no placeholder, or several for one video).
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {ids.shape}")
    counts = (ids == video_token_id).sum(axis=1)
    bad = np.nonzero(counts != 1)[0]
    if bad.size:
        detail = ", ".join(f"row {r}: {counts[r]} placeholders" for r in bad[:8])
        raise ValueError(
            f"each prompt must contain exactly one video placeholder (id {video_token_id}); {detail}. "
            "Put one '<image>' in the first user turn (data_pipeline.chat_template does this)."
        )
    return np.argmax(ids == video_token_id, axis=1)


def splice_video(
    text_embeds: jax.Array,
    video_embeds: jax.Array,
    placeholder_pos: jax.Array,
    attention_mask: jax.Array | None = None,
    labels: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Inserts ``video_embeds`` at ``placeholder_pos`` (dropping the placeholder).

    text_embeds [B, T, D] (the placeholder row content is ignored), video_embeds [B, V, D],
    placeholder_pos int [B], attention_mask [B, T] (1 = real token, right padding),
    labels [B, T] -> dict with ``inputs_embeds`` [B, L, D], ``attention_mask`` [B, L],
    ``positions`` [B, L] (0..L-1, the reference's plain 1-D positions), ``labels`` [B, L]
    (video positions ignored), ``video_mask`` [B, L], where L = T - 1 + V.
    """
    b, t, _ = text_embeds.shape
    v = video_embeds.shape[1]
    length = t - 1 + v
    j = jnp.arange(length)[None, :]
    p = jnp.asarray(placeholder_pos)[:, None]
    in_video = (j >= p) & (j < p + v)
    text_idx = jnp.where(j < p, j, j - v + 1)
    text_idx = jnp.clip(text_idx, 0, t - 1)
    vid_idx = jnp.clip(j - p, 0, max(v - 1, 0))
    take = lambda x, idx: jnp.take_along_axis(x, idx[..., None], axis=1)  # noqa: E731
    embeds = jnp.where(in_video[..., None], take(video_embeds, vid_idx).astype(text_embeds.dtype),
                       take(text_embeds, text_idx))
    out = {
        "inputs_embeds": embeds,
        "video_mask": in_video,
        "positions": jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length)),
    }
    mask = jnp.ones((b, t), jnp.int32) if attention_mask is None else jnp.asarray(attention_mask)
    out["attention_mask"] = jnp.where(in_video, 1, jnp.take_along_axis(mask, text_idx, axis=1)).astype(mask.dtype)
    if labels is not None:
        lab = jnp.take_along_axis(jnp.asarray(labels), text_idx, axis=1)
        out["labels"] = jnp.where(in_video, IGNORE_INDEX, lab)
    return out


def check_length(t: int, v: int, placeholder_pos: np.ndarray, max_length: int, policy: str = "error") -> int:
    """Length after splicing, enforcing ``model_max_length`` without ever cutting video tokens.

    ``policy="error"`` refuses over-long sequences; ``"truncate"`` returns ``max_length`` (the
    caller cuts text after the video), but still refuses if the video itself would be cut.
    """
    length = t - 1 + v
    if length <= max_length:
        return length
    video_end = int(np.max(placeholder_pos)) + v
    if policy == "truncate" and video_end <= max_length:
        return max_length
    raise ValueError(
        f"prompt is too long: {t - 1} text tokens + {v} video tokens = {length} > model_max_length "
        f"{max_length}. Shorten the question, use fewer frames, or raise model_max_length"
        + ("" if policy == "truncate" else " (or set truncation='truncate' to cut text after the video)")
    )
