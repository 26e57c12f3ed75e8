"""CUT3R downstream head (``DPTPts3dPose``): pose MLP on the camera token, a self-view point map
DPT, an RGB DPT and a world-frame point map DPT fed with pose-modulated tokens; plus the output
transforms (``postprocess*``) and the pose -> 4x4 camera conversion."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vlm3r_jax.models.cut3r.blocks import ConditionModulationBlock, Mlp, RopeSpec
from vlm3r_jax.models.cut3r.config import Cut3rConfig
from vlm3r_jax.models.cut3r.dpt import DPTOutputAdapter


class PoseDecoder(nnx.Module):
    """``mlp``: Dd -> ratio*Dd -> 7 ([tx, ty, tz, qw, qx, qy, qz], raw)."""

    def __init__(self, dim: int, ratio: int, *, param_dtype, rngs: nnx.Rngs):
        self.mlp = Mlp(dim, dim * ratio, 7, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.mlp(x)


def reg_dense_depth(xyz: jax.Array, mode: tuple) -> jax.Array:
    """[..., 3] raw -> points: xyz / max(|xyz|, 1e-8) * f(|xyz|), f = expm1 ('exp'), d^2 ('square')."""
    name, vmin, vmax = mode
    if name == "linear":
        return xyz if (vmin == -math.inf and vmax == math.inf) else jnp.clip(xyz, vmin, vmax)
    d = jnp.linalg.norm(xyz, axis=-1, keepdims=True)
    xyz = xyz / jnp.maximum(d, 1e-8)
    if name == "square":
        return xyz * jnp.square(d)
    return xyz * jnp.expm1(d)


def reg_dense_conf(x: jax.Array, mode: tuple) -> jax.Array:
    name, vmin, vmax = mode
    if name == "exp":
        return vmin + jnp.minimum(jnp.exp(x), vmax - vmin)
    return (vmax - vmin) * jax.nn.sigmoid(x) + vmin


def postprocess_rgb(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    return (jax.nn.sigmoid(x) * (1 - 2 * eps) + eps - 0.5) * 2


def postprocess_pose(raw: jax.Array, mode: tuple) -> jax.Array:
    """[..., 7] -> translation scaled by f(|t|)/|t|, unit quaternion with q_w >= 0."""
    name = mode[0]
    t, q = raw[..., :3], raw[..., 3:7]
    if name != "linear":
        d = jnp.linalg.norm(t, axis=-1, keepdims=True)
        if name == "exp":
            scale = jnp.expm1(d) / jnp.maximum(d, 1e-8)
        else:
            scale = jnp.square(d) / jnp.maximum(d, 1e-8)
        t = t * scale
    # F.normalize: q / max(|q|, 1e-12)
    q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    q = jnp.where(q[..., :1] < 0, -q, q)
    return jnp.concatenate([t, q], axis=-1)


def quaternion_to_matrix(q: jax.Array) -> jax.Array:
    """Real-first quaternions [..., 4] -> rotation matrices [..., 3, 3] (pytorch3d convention)."""
    r, i, j, k = (q[..., n] for n in range(4))
    two_s = 2.0 / jnp.sum(q * q, axis=-1)
    o = jnp.stack(
        [
            1 - two_s * (j * j + k * k),
            two_s * (i * j - k * r),
            two_s * (i * k + j * r),
            two_s * (i * j + k * r),
            1 - two_s * (i * i + k * k),
            two_s * (j * k - i * r),
            two_s * (i * k - j * r),
            two_s * (j * k + i * r),
            1 - two_s * (i * i + j * j),
        ],
        axis=-1,
    )
    return o.reshape(q.shape[:-1] + (3, 3))


def pose_encoding_to_camera(pose: jax.Array) -> jax.Array:
    """[..., 7] (t, q) -> camera-to-world [..., 4, 4]."""
    rot = quaternion_to_matrix(pose[..., 3:7])
    top = jnp.concatenate([rot, pose[..., :3, None]], axis=-1)
    bottom = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 0.0, 1.0], pose.dtype), pose.shape[:-1] + (1, 4))
    return jnp.concatenate([top, bottom], axis=-2)


def transform_points(c2w: jax.Array, pts: jax.Array) -> jax.Array:
    """c2w: [B, 4, 4], pts: [B, H, W, 3] -> [B, H, W, 3] (homogeneous transform, as ``geotrf``)."""
    return jnp.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], pts) + c2w[:, None, None, :3, 3]


class DPTPts3dPose(nnx.Module):
    def __init__(self, cfg: Cut3rConfig, *, rngs: nnx.Rngs):
        pd = jnp.dtype(cfg.param_dtype)
        self.cfg = cfg
        ed, dd = cfg.enc_embed_dim, cfg.dec_embed_dim
        dims = [ed, dd, dd, dd]
        kw = dict(
            patch_size=cfg.patch_size,
            feature_dim=cfg.dpt_feature_dim,
            last_dim=cfg.dpt_last_dim,
            layer_dims=cfg.dpt_layer_dims,
            param_dtype=pd,
            rngs=rngs,
        )
        pts_ch = 3 + int(cfg.has_conf)
        self.dpt_self = DPTOutputAdapter(dims, pts_ch, **kw)
        rope = RopeSpec(cfg.rope_base, cfg.rope_f0, False)
        self.final_transform = nnx.List(
            [
                ConditionModulationBlock(
                    dd, cfg.dec_num_heads, 4.0, eps=1e-6, rope=rope, impl=cfg.attention_impl, param_dtype=pd, rngs=rngs
                )
                for _ in range(cfg.final_transform_blocks)
            ]
        )
        self.dpt_cross = DPTOutputAdapter(dims, pts_ch, **kw)
        self.dpt_rgb = DPTOutputAdapter(dims, 3, **kw) if cfg.rgb_head else None
        self.pose_head = PoseDecoder(dd, cfg.pose_decoder_mlp_ratio, param_dtype=pd, rngs=rngs)

    def __call__(self, hooks: list[jax.Array], img_pos: jax.Array, image_hw: tuple[int, int]) -> dict[str, jax.Array]:
        """hooks: [enc_feat [B,N,De], dec_l1 [B,N,Dd], dec_l2 [B,N,Dd], dec_last [B,1+N,Dd] (pose token
        first)], img_pos: int [N, 2] -> dict of per-pixel maps [B, H, W, ...] and pose [B, 7]."""
        cfg = self.cfg
        hooks = [h.astype(jnp.float32) for h in hooks]
        pose_tok = hooks[3][:, 0]
        tokens = hooks[3][:, 1:]
        cross = tokens
        for blk in self.final_transform:
            cross = blk(cross, pose_tok, img_pos[None])
        x = hooks[:3] + [tokens]
        x_cross = hooks[:3] + [cross]
        out: dict[str, jax.Array] = {}
        s = self.dpt_self(x, image_hw)
        out["pts3d_in_self_view"] = reg_dense_depth(s[..., :3], cfg.depth_mode)
        out["conf_self"] = reg_dense_conf(s[..., 3], cfg.conf_mode)
        if self.dpt_rgb is not None:
            out["rgb"] = postprocess_rgb(self.dpt_rgb(x, image_hw))
        pose = postprocess_pose(self.pose_head(pose_tok), cfg.pose_mode)
        out["camera_pose"] = pose
        c = self.dpt_cross(x_cross, image_hw)
        out["pts3d_in_other_view"] = reg_dense_depth(c[..., :3], cfg.depth_mode)
        out["conf"] = reg_dense_conf(c[..., 3], cfg.conf_mode)
        c2w = pose_encoding_to_camera(pose)
        out["camera_c2w"] = c2w
        out["pts3d_world_from_pose"] = transform_points(c2w, out["pts3d_in_self_view"])
        return out
