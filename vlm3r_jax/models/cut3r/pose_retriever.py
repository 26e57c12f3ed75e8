"""CUT3R's pose memory (``LocalMemory``): M slots of width 2*Dd, read with a query built from the
frame's mean encoder feature, written with [proj_q(g), pose token]. Its decoder blocks use no RoPE."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlm3r_jax.layers import Linear
from vlm3r_jax.layers.scan import scan_layers, stack_modules
from vlm3r_jax.models.cut3r.blocks import DecoderBlock
from vlm3r_jax.models.cut3r.config import Cut3rConfig


class PoseRetriever(nnx.Module):
    def __init__(self, cfg: Cut3rConfig, *, rngs: nnx.Rngs):
        pd = jnp.dtype(cfg.param_dtype)
        dd = cfg.dec_embed_dim
        self.v_dim = dd
        self.proj_q = Linear(cfg.enc_embed_dim, dd, axes=("embed", "mlp"), param_dtype=pd, rngs=rngs)
        key = rngs.params()
        self.masked_token = nnx.Param(0.2 * jax.random.normal(key, (1, 1, dd), pd), logical_axes=(None, None, "embed"))
        self.mem = nnx.Param(
            0.2 * jax.random.normal(rngs.params(), (1, cfg.local_mem_size, 2 * dd), pd),
            logical_axes=(None, "positions", "embed"),
        )

        def blocks(name: str) -> nnx.Module:
            return stack_modules(
                [
                    DecoderBlock(
                        2 * dd,
                        cfg.dec_num_heads,
                        cfg.local_mem_mlp_ratio,
                        eps=cfg.norm_eps,
                        rope=None,
                        impl=cfg.attention_impl,
                        param_dtype=pd,
                        rngs=rngs,
                    )
                    for _ in range(cfg.local_mem_depth)
                ],
                name,
            )

        self.write_blocks = blocks("write_blocks")
        self.read_blocks = blocks("read_blocks")
        self.remat = cfg.remat

    def init_mem(self, batch: int, dtype: jnp.dtype) -> jax.Array:
        """[B, M, 2 * Dd] initial memory (the learned ``mem`` parameter)."""
        m = self.mem[...].astype(dtype)
        return jnp.broadcast_to(m, (batch,) + m.shape[1:])

    def inquire(self, query: jax.Array, mem: jax.Array) -> jax.Array:
        """query: [B, 1, De] (mean encoder feature), mem: [B, M, 2Dd] -> pose token [B, 1, Dd]."""
        x = self.proj_q(query)
        tok = jnp.broadcast_to(self.masked_token[...].astype(x.dtype), x.shape)
        x = jnp.concatenate([x, tok], axis=-1)
        x, _ = scan_layers(self.read_blocks, lambda blk, h, _: (blk(h, mem), None), x, policy=self.remat)
        return x[..., -self.v_dim :]

    def update_mem(self, mem: jax.Array, feat_k: jax.Array, feat_v: jax.Array) -> jax.Array:
        """mem: [B, M, 2Dd], feat_k: [B, 1, De], feat_v: [B, 1, Dd] -> new mem [B, M, 2Dd]."""
        feat = jnp.concatenate([self.proj_q(feat_k), feat_v.astype(mem.dtype)], axis=-1)
        mem, _ = scan_layers(self.write_blocks, lambda blk, m, _: (blk(m, feat), None), mem, policy=self.remat)
        return mem
