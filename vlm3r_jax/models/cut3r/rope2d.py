"""2-D rotary position embedding with CroCo's cuRoPE semantics.

For a head of width ``hd`` and ``Q = hd / 4``: the first half of the head is rotated by the
token's y (row) position, the second half by its x (column) position. Inside a half starting at
offset ``o`` the pairs are ``(t[o + d], t[o + Q + d])`` for ``d < Q`` (rotate-half pairing, not
interleaved), with angle ``F0 * pos / base ** (d / Q)``. Positions may be negative: CUT3R puts
its pose token at ``(-1, -1)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_angles(pos: jax.Array, head_dim: int, base: float, f0: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """pos: int [B, T, 2] (y, x) -> (cos, sin), each float32 [B, T, 2, Q].

    The angle is computed as ``(f0 * p) / base ** (d / Q)`` in float32, the order the reference
    kernel uses (``fwd * p / powf(base, d / float(D))``).
    """
    q = head_dim // 4
    denom = jnp.power(jnp.float32(base), jnp.arange(q, dtype=jnp.float32) / jnp.float32(q))
    ang = (jnp.float32(f0) * pos.astype(jnp.float32))[..., None] / denom  # [B, T, 2, Q]
    return jnp.cos(ang), jnp.sin(ang)


def apply_rope2d(
    x: jax.Array, pos: jax.Array, base: float, f0: float = 1.0, *, fp16_rounding: bool = False
) -> jax.Array:
    """x: [B, T, N, H], pos: int [B or 1, T, 2] -> [B, T, N, H] in x's dtype.

    With Q = H // 4 the first 2Q values of a head turn with the y position and the next 2Q with
    the x position; when H is not a multiple of 4 the last H - 4Q values pass through, as in the
    reference's CPU kernel (its CUDA kernel refuses such heads).
    ``fp16_rounding`` reproduces the CroCo encoder: q/k are cast to float16 before RoPE, the
    kernel rotates in float32 and stores float16, and the result is cast back:
    ``f32(f16(rope(f32(f16(x)))))``.
    """
    b, t, n, h = x.shape
    dtype = x.dtype
    xf = x.astype(jnp.float32)
    if fp16_rounding:
        xf = xf.astype(jnp.float16).astype(jnp.float32)
    q = h // 4
    xf, tail = xf[..., : 4 * q], xf[..., 4 * q :]
    cos, sin = rope_angles(pos, h, base, f0)  # [B, T, 2, Q]
    xr = xf.reshape(b, t, n, 2, 2, q)  # (axis y/x, u/v half, d)
    u, v = xr[..., 0, :], xr[..., 1, :]  # [B, T, N, 2, Q]
    c = cos[:, :, None]
    s = sin[:, :, None]
    out = jnp.stack([u * c - v * s, v * c + u * s], axis=-2).reshape(b, t, n, 4 * q)
    if h % 4:
        out = jnp.concatenate([out, tail], axis=-1)
    if fp16_rounding:
        out = out.astype(jnp.float16)
    return out.astype(dtype)


def patch_positions(h: int, w: int) -> jax.Array:
    """Integer (y, x) of each patch of an ``h x w`` grid, row-major: [h * w, 2]."""
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.int32), jnp.arange(w, dtype=jnp.int32), indexing="ij")
    return jnp.stack([yy.reshape(-1), xx.reshape(-1)], axis=-1)


def state_positions(state_size: int, state_pe: str = "2d") -> jax.Array:
    """Positions of the state tokens: '2d' -> (i // w, i % w) with w = int(sqrt(S)) rounded up to
    even; '1d' -> (i, i). Returns int [S, 2]."""
    i = jnp.arange(state_size, dtype=jnp.int32)
    if state_pe == "1d":
        return jnp.stack([i, i], axis=-1)
    width = int(state_size**0.5)
    width = width + 1 if width % 2 == 1 else width
    return jnp.stack([i // width, i % width], axis=-1)
