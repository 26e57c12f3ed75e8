"""CUT3R joint decoder: the image stream (pose token + patch tokens) and the state stream read
each other layer by layer; both branches of layer l read the outputs of layer l-1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlm3r_jax.layers import LayerNorm, Linear
from vlm3r_jax.layers.scan import scan_layers, stack_modules
from vlm3r_jax.models.cut3r.blocks import DecoderBlock, RopeSpec
from vlm3r_jax.models.cut3r.config import Cut3rConfig


class Cut3rDecoder(nnx.Module):
    def __init__(self, cfg: Cut3rConfig, *, rngs: nnx.Rngs):
        pd = jnp.dtype(cfg.param_dtype)
        self.cfg = cfg
        rope = RopeSpec(cfg.rope_base, cfg.rope_f0, False)  # the decoder's RoPE stays in float32
        ed, dd = cfg.enc_embed_dim, cfg.dec_embed_dim
        self.decoder_embed = Linear(ed, dd, axes=("embed", "mlp"), param_dtype=pd, rngs=rngs)
        self.decoder_embed_state = Linear(ed, dd, axes=("embed", "mlp"), param_dtype=pd, rngs=rngs)

        def blocks(heads: int, name: str) -> nnx.Module:
            return stack_modules(
                [
                    DecoderBlock(
                        dd,
                        heads,
                        cfg.mlp_ratio,
                        eps=cfg.norm_eps,
                        rope=rope,
                        impl=cfg.attention_impl,
                        param_dtype=pd,
                        rngs=rngs,
                        norm_mem=cfg.norm_im2_in_dec,
                    )
                    for _ in range(cfg.dec_depth)
                ],
                name,
            )

        # two stacks scanned together: layer l of both streams reads the outputs of layer l-1
        self.dec_blocks = blocks(cfg.dec_num_heads, "dec_blocks")
        self.dec_blocks_state = blocks(cfg.state_dec_num_heads, "dec_blocks_state")
        self.dec_norm = LayerNorm(dd, eps=cfg.norm_eps, param_dtype=pd)
        self.dec_norm_state = LayerNorm(dd, eps=cfg.norm_eps, param_dtype=pd)

    def __call__(
        self,
        state: jax.Array,
        state_pos: jax.Array,
        enc_feat: jax.Array,
        img_pos: jax.Array,
        pose_tok: jax.Array,
    ) -> tuple[jax.Array, list[jax.Array]]:
        """state: [B, S, Dd], state_pos: int [S, 2], enc_feat: [B, N, De], img_pos: int [N, 2],
        pose_tok: [B, 1, Dd].

        Returns (new state [B, S, Dd] after ``dec_norm_state``, image-stream outputs of every layer
        ``[dec_1, ..., dec_L]`` each [B, 1 + N, Dd] with the pose token first; the last one after
        ``dec_norm``).
        """
        f_img = jnp.concatenate([pose_tok.astype(enc_feat.dtype), self.decoder_embed(enc_feat)], axis=1)
        pos_img = jnp.concatenate([jnp.full((1, 2), -1, img_pos.dtype), img_pos], axis=0)[None]
        spos = state_pos[None]
        f_state = state.astype(f_img.dtype)

        def body(blocks: tuple, carry: tuple, _: None) -> tuple[tuple, jax.Array]:
            blk_state, blk_img = blocks
            f_state, f_img = carry
            new_state = blk_state(f_state, f_img, spos, pos_img)
            f_img = blk_img(f_img, f_state, pos_img, spos)
            return (new_state, f_img), f_img

        (f_state, _), ys = scan_layers((self.dec_blocks_state, self.dec_blocks), body, (f_state, f_img),
                                       policy=self.cfg.remat)
        outs = [ys[i] for i in range(ys.shape[0])]
        outs[-1] = self.dec_norm(outs[-1])
        return self.dec_norm_state(f_state), outs
