"""CUT3R (``ARCroco3DStereo``): encoder + recurrent state/pose-memory decoder + DPT/pose heads.

The recurrence is exposed as a pure step ``(carry, frame features) -> (carry', outputs)`` where
``carry`` holds the state tokens, the pose memory and their initial values (for ``reset``). The
whole sequence runs it under ``jax.lax.scan`` (:meth:`Cut3r.rollout`); a streaming caller encodes
one frame at a time and calls :meth:`Cut3r.step` itself, so every frame costs the same.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from vlm3r_jax.models.cut3r.config import Cut3rConfig
from vlm3r_jax.models.cut3r.decoder import Cut3rDecoder
from vlm3r_jax.models.cut3r.encoder import Cut3rEncoder
from vlm3r_jax.models.cut3r.heads import DPTPts3dPose
from vlm3r_jax.models.cut3r.pose_retriever import PoseRetriever
from vlm3r_jax.models.cut3r.rope2d import state_positions
from vlm3r_jax.models.host_init import fill_random
from vlm3r_jax.sharding import constrain


class Carry(NamedTuple):
    """Recurrent state between frames (all [B, ...])."""

    state: jax.Array  # [B, S, Dd] state tokens (after dec_norm_state)
    mem: jax.Array  # [B, M, 2Dd] pose memory
    init_state: jax.Array  # [B, S, Dd] state at frame 0 (target of reset)
    init_mem: jax.Array  # [B, M, 2Dd]
    first: jax.Array  # bool [] - next frame is frame 0 (use the learned pose token)


class Cut3r(nnx.Module):
    def __init__(self, cfg: Cut3rConfig, *, rngs: nnx.Rngs):
        pd = jnp.dtype(cfg.param_dtype)
        self.cfg = cfg
        self.encoder = Cut3rEncoder(cfg, rngs=rngs)
        self.decoder = Cut3rDecoder(cfg, rngs=rngs)
        self.pose_token = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (1, 1, cfg.dec_embed_dim), pd), logical_axes=(None, None, "embed")
        )
        self.pose_retriever = PoseRetriever(cfg, rngs=rngs)
        self.register_tokens = nnx.Param(
            jax.random.normal(rngs.params(), (cfg.state_size, cfg.enc_embed_dim), pd),
            logical_axes=("positions", "embed"),
        )
        self.downstream_head = DPTPts3dPose(cfg, rngs=rngs)

    # --- pieces -------------------------------------------------------------------------------
    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.cfg.dtype)

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images: [B, H, W, 3] in [-1, 1] -> (enc_feat [B, N, De], enc_pos int [N, 2])."""
        return self.encoder(images)

    def init_carry(self, batch: int) -> Carry:
        """Frame-0 state: ``decoder_embed_state(register_tokens)`` and the learned memory."""
        dt = self.compute_dtype
        state = self.decoder.decoder_embed_state(self.register_tokens[...].astype(dt))[None]
        state = jnp.broadcast_to(state, (batch,) + state.shape[1:])
        mem = self.pose_retriever.init_mem(batch, dt)
        return Carry(state, mem, state, mem, jnp.asarray(True))

    def step(
        self,
        carry: Carry,
        enc_feat: jax.Array,
        enc_pos: jax.Array,
        image_hw: tuple[int, int] | None,
        update: jax.Array | None = None,
        reset: jax.Array | None = None,
    ) -> tuple[Carry, dict[str, jax.Array]]:
        """One frame of the recurrence (pure; no parameter is mutated).

        enc_feat: [B, N, De], enc_pos: int [N, 2]; ``image_hw`` = (H, W) runs the heads (None skips
        them); update/reset: optional bool [B] (defaults: update everything, never reset).
        Returns the new carry and this frame's outputs (each [B, ...]).
        """
        cfg = self.cfg
        b = enc_feat.shape[0]
        g = jnp.mean(enc_feat, axis=1, keepdims=True)  # [B, 1, De]
        retrieved = self.pose_retriever.inquire(g, carry.mem)
        learned = jnp.broadcast_to(self.pose_token[...].astype(retrieved.dtype), retrieved.shape)
        pose_in = jnp.where(carry.first, learned, retrieved)
        new_state, dec = self.decoder(
            carry.state, state_positions(cfg.state_size, cfg.state_pe), enc_feat, enc_pos, pose_in
        )
        new_state = constrain(new_state, ("batch", "length", "act_embed"))
        pose_out = dec[-1][:, :1]
        new_mem = self.pose_retriever.update_mem(carry.mem, g, pose_out)
        state, mem = new_state, new_mem
        if update is not None:
            u = update.reshape(b, 1, 1)
            state = jnp.where(u, new_state, carry.state)
            mem = jnp.where(u, new_mem, carry.mem)
        if reset is not None:
            r = reset.reshape(b, 1, 1)
            state = jnp.where(r, carry.init_state, state)
            mem = jnp.where(r, carry.init_mem, mem)
        out: dict[str, jax.Array] = {
            "enc_feat": enc_feat,
            "global_img_feat": g,
            "pose_token_in": pose_in,
            "retrieved_pose": retrieved,
            "dec_pose_token_out": pose_out,
            "dec_img_tokens_out": dec[-1][:, 1:],
            "state_after_frame": state,
            "mem_after_frame": mem,
        }
        for i, d in enumerate(dec):
            out[f"dec_img_layer{i + 1}"] = d
        if image_hw is not None:
            L = cfg.dec_depth
            if cfg.patch_size != 16 or L < 2:
                # the reference crashes on both: its DPT head hard-codes 16-pixel patches, and with
                # one decoder layer its second hook is the encoder output without a pose token
                raise ValueError(
                    f"the point-map/pose heads need patch_size 16 and dec_depth >= 2 (this config: "
                    f"{cfg.patch_size}, {L}), as the reference's DPT head; the tokens alone "
                    "(geo.tokens(frames), or geo.stream(frames, with_heads=False)) work for any config"
                )
            # reference: [dec[0] = encoder features, dec[L*2//4][:, 1:], dec[L*3//4][:, 1:], dec[L]]
            hooks = [enc_feat, dec[L * 2 // 4 - 1][:, 1:], dec[L * 3 // 4 - 1][:, 1:], dec[L - 1]]
            out.update(self.downstream_head(hooks, enc_pos, image_hw))
        new_carry = Carry(state, mem, carry.init_state, carry.init_mem, jnp.asarray(False))
        return new_carry, out

    # --- whole sequences ----------------------------------------------------------------------
    def rollout(
        self,
        images: jax.Array,
        *,
        with_heads: bool = True,
        update: jax.Array | None = None,
        reset: jax.Array | None = None,
        carry: Carry | None = None,
    ) -> tuple[Carry, dict[str, jax.Array]]:
        """images: [B, T, H, W, 3] in [-1, 1]; update/reset: optional bool [B, T].

        Encodes all frames at once, then scans :meth:`step` over T. Returns the final carry and
        the per-frame outputs stacked as [B, T, ...].
        """
        b, t, h, w, _ = images.shape
        feats, pos = self.encode(rearrange(images, "b t h w c -> (b t) h w c"))
        feats = rearrange(feats, "(b t) n d -> t b n d", b=b)
        carry = self.init_carry(b) if carry is None else carry
        xs: dict[str, Any] = {"feat": feats}
        if update is not None:
            xs["update"] = jnp.swapaxes(update, 0, 1)
        if reset is not None:
            xs["reset"] = jnp.swapaxes(reset, 0, 1)
        hw = (h, w) if with_heads else None

        def body(c: Carry, x: dict[str, Any]) -> tuple[Carry, dict[str, jax.Array]]:
            return self.step(c, x["feat"], pos, hw, x.get("update"), x.get("reset"))

        carry, outs = jax.lax.scan(body, carry, xs)
        outs = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), outs)
        return carry, outs

    def tokens(self, images: jax.Array) -> jax.Array:
        """images: [B, T, H, W, 3] -> [B, T, 1 + N, Dd]: camera token then patch tokens of the
        final (normed) decoder layer, as VLM-3R consumes them. Heads are skipped."""
        _, outs = self.rollout(images, with_heads=False)
        return outs[f"dec_img_layer{self.cfg.dec_depth}"]


def forward_fn(graphdef: nnx.GraphDef, with_heads: bool = True):
    """Pure ``(state, images [B, T, H, W, 3]) -> outputs`` for ``jax.jit``."""

    def fn(state: nnx.State, images: jax.Array) -> dict[str, jax.Array]:
        model = nnx.merge(graphdef, state)
        return model.rollout(images, with_heads=with_heads)[1]

    return fn


def init_fn(graphdef: nnx.GraphDef):
    """Pure ``(state, batch) -> Carry`` (frame-0 state and memory)."""

    def fn(state: nnx.State, batch: int) -> Carry:
        return nnx.merge(graphdef, state).init_carry(batch)

    return fn


def step_fn(graphdef: nnx.GraphDef, with_heads: bool = True):
    """Pure streaming step ``(state, carry, image [B, H, W, 3]) -> (carry', outputs)``: encodes
    one frame and advances the recurrence by one frame (constant cost per frame)."""

    def fn(state: nnx.State, carry: Carry, image: jax.Array) -> tuple[Carry, dict[str, jax.Array]]:
        model = nnx.merge(graphdef, state)
        feat, pos = model.encode(image)
        hw = tuple(image.shape[1:3]) if with_heads else None
        return model.step(carry, feat, pos, hw)

    return fn


def init_cut3r(cfg: Cut3rConfig, seed: int = 0) -> Cut3r:
    """Randomly initialised model with parameters drawn on the host
    (:func:`vlm3r_jax.models.host_init.fill_random`: kernels ~ N(0, 1/fan_in), norms = 1, biases = 0,
    learned tokens ~ N(0, 0.02^2), memory slots 0.2 as the reference)."""

    return fill_random(abstract_cut3r(cfg), seed)


_ABSTRACT: dict[Cut3rConfig, Cut3r] = {}


def abstract_cut3r(cfg: Cut3rConfig) -> Cut3r:
    """``nnx.eval_shape`` of the model (cached per config; tracing the init is not free)."""
    if cfg not in _ABSTRACT:
        _ABSTRACT[cfg] = nnx.eval_shape(lambda: Cut3r(cfg, rngs=nnx.Rngs(0)))
    return _ABSTRACT[cfg]
