"""CUT3R image encoder: 16x16 patch embedding + pre-LN ViT with 2-D RoPE + final LayerNorm."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from vlm3r_jax.layers import LayerNorm
from vlm3r_jax.layers.scan import scan_layers, stack_modules
from vlm3r_jax.models.cut3r.blocks import EncoderBlock, RopeSpec
from vlm3r_jax.models.cut3r.config import Cut3rConfig
from vlm3r_jax.models.cut3r.rope2d import patch_positions


class PatchEmbed(nnx.Module):
    """Conv2d(in, D, p, stride p) as a matmul over non-overlapping patches.

    ``proj.kernel`` is HWIO ``[p, p, in, D]`` (the reference's OIHW weight transposed)."""

    def __init__(self, patch: int, in_chans: int, dim: int, *, param_dtype: Any, rngs: nnx.Rngs):
        self.patch = patch
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(
            init(rngs.params(), (patch, patch, in_chans, dim), param_dtype),
            logical_axes=("patch", "patch", "conv_in", "embed"),
        )
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), logical_axes=("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, C] (H, W multiples of the patch) -> tokens [B, (H/p)*(W/p), D], row-major."""
        b, h, w, c = x.shape
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} must be a multiple of the patch size {p}")
        patches = rearrange(x, "b (h p) (w q) c -> b (h w) (p q c)", p=p, q=p)
        k = self.kernel[...].astype(x.dtype).reshape(p * p * c, -1)
        return patches @ k + self.bias[...].astype(x.dtype)


class Cut3rEncoder(nnx.Module):
    """Frames -> patch features after ``enc_norm``."""

    def __init__(self, cfg: Cut3rConfig, *, rngs: nnx.Rngs):
        pd = jnp.dtype(cfg.param_dtype)
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, 3, cfg.enc_embed_dim, param_dtype=pd, rngs=rngs)
        rope = RopeSpec(cfg.rope_base, cfg.rope_f0, cfg.rope_fp16_rounding)
        self.enc_blocks = stack_modules(
            [
                EncoderBlock(
                    cfg.enc_embed_dim,
                    cfg.enc_num_heads,
                    cfg.mlp_ratio,
                    eps=cfg.norm_eps,
                    rope=rope,
                    impl=cfg.attention_impl,
                    param_dtype=pd,
                    rngs=rngs,
                )
                for _ in range(cfg.enc_depth)
            ],
            "enc_blocks",
        )
        self.enc_norm = LayerNorm(cfg.enc_embed_dim, eps=cfg.norm_eps, param_dtype=pd)

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images: [B, H, W, 3] in [-1, 1] -> (features [B, N, De], positions int [N, 2])."""
        p = self.cfg.patch_size
        x = self.patch_embed(images.astype(jnp.dtype(self.cfg.dtype)))
        pos = patch_positions(images.shape[1] // p, images.shape[2] // p)
        x, _ = scan_layers(self.enc_blocks, lambda blk, h, _: (blk(h, pos[None]), None), x,
                           policy=self.cfg.remat)
        return self.enc_norm(x), pos
