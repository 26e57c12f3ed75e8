"""CUT3R (``ARCroco3DStereo``) configuration.

Field names follow the reference constructor arguments (``ARCroco3DStereoConfig`` plus the CroCo
kwargs), so a reference ``config.json`` or ``args.model`` string maps onto this dataclass 1:1.
Constants the reference hard-codes (DPT sizes, RoPE base, memory depth, ...) are fields too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from vlm3r_jax.layers.remat import REMAT_POLICIES

INF = math.inf


@dataclasses.dataclass(frozen=True)
class Cut3rConfig:
    # CroCo backbone
    patch_size: int = 16
    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    norm_im2_in_dec: bool = True
    pos_embed: str = "RoPE100"
    rope_f0: float = 1.0
    # The reference's encoder attention casts q/k to float16 around RoPE (croco/models/blocks.py);
    # True reproduces that rounding (needed for ~1e-5 parity), False keeps q/k in float32.
    rope_fp16_rounding: bool = True
    # ARCroco3DStereo
    state_size: int = 768
    state_pe: str = "2d"
    state_dec_num_heads: int = 16
    local_mem_size: int = 256
    local_mem_depth: int = 2
    local_mem_mlp_ratio: float = 4.0
    ray_enc_depth: int = 2
    output_mode: str = "pts3d+pose"
    head_type: str = "dpt"
    depth_mode: tuple = ("exp", -INF, INF)
    conf_mode: tuple = ("exp", 1, INF)
    pose_mode: tuple = ("exp", -INF, INF)
    rgb_head: bool = True
    pose_head: bool = True
    depth_head: bool = False
    pose_conf_head: bool = False
    # DPT adapter sizes, hard-coded in the reference (256 / 128 / [96, 192, 384, 768]).
    dpt_feature_dim: int = 256
    dpt_last_dim: int = 128
    dpt_layer_dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    final_transform_blocks: int = 2
    pose_decoder_mlp_ratio: int = 4
    # informational: what the reference config said (unused by the computation)
    img_size: tuple[int, int] = (512, 512)
    patch_embed_cls: str = "PatchEmbedDust3R"
    landscape_only: bool = False
    freeze: str = "none"
    # numerics / execution
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "auto"
    remat: str = "none"  # per-layer rematerialization of the encoder/decoder scans (layers/remat.py)

    def __post_init__(self) -> None:
        problems = []
        if self.remat not in REMAT_POLICIES:
            problems.append(f"remat={self.remat!r} (choose one of {', '.join(REMAT_POLICIES)})")
        if not self.pos_embed.startswith("RoPE"):
            problems.append(f"pos_embed={self.pos_embed!r} (only 'RoPE<base>' is supported)")
        if self.head_type != "dpt" or self.output_mode != "pts3d+pose":
            problems.append(
                f"head_type={self.head_type!r}/output_mode={self.output_mode!r} (only 'dpt' + 'pts3d+pose', "
                "the released checkpoint's head, is implemented)"
            )
        if not self.pose_head:
            problems.append("pose_head=False (the pose-token rollout is the only implemented variant)")
        # depth_head / pose_conf_head: the reference's dpt 'pts3d+pose' head never reads them
        if self.state_pe not in ("2d", "1d"):
            problems.append(f"state_pe={self.state_pe!r} (expected '2d' or '1d')")
        for name, dim, heads in (
            ("enc", self.enc_embed_dim, self.enc_num_heads),
            ("dec", self.dec_embed_dim, self.dec_num_heads),
            ("state_dec", self.dec_embed_dim, self.state_dec_num_heads),
        ):
            if dim % heads:
                problems.append(f"{name}: dim {dim} is not divisible by heads {heads}")
        for mode_name in ("depth_mode", "conf_mode", "pose_mode"):
            mode = getattr(self, mode_name)
            if len(mode) != 3:
                problems.append(f"{mode_name}={mode!r} must be (name, vmin, vmax)")
        if self.depth_mode[0] not in ("exp", "linear", "square") or self.pose_mode[0] not in (
            "exp",
            "linear",
            "square",
        ):
            problems.append(f"unsupported depth/pose mode {self.depth_mode[0]!r}/{self.pose_mode[0]!r}")
        if self.conf_mode[0] not in ("exp", "sigmoid"):
            problems.append(f"unsupported conf_mode {self.conf_mode[0]!r}")
        if len(self.dpt_layer_dims) != 4:
            problems.append(f"dpt_layer_dims={self.dpt_layer_dims!r} must have 4 entries")
        if problems:
            raise ValueError("invalid Cut3rConfig: " + "; ".join(problems))

    @property
    def rope_base(self) -> float:
        return float(self.pos_embed[len("RoPE") :])

    @property
    def has_conf(self) -> bool:
        return bool(self.conf_mode)

    def replace(self, **kw: Any) -> Cut3rConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (inf written as the strings 'inf'/'-inf', like the golden config.json)."""

        def enc(v: Any) -> Any:
            if isinstance(v, float) and math.isinf(v):
                return "inf" if v > 0 else "-inf"
            if isinstance(v, (tuple, list)):
                return [enc(x) for x in v]
            return v

        return {f.name: enc(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Cut3rConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown Cut3rConfig fields {unknown}; valid fields: {sorted(names)}")
        kw = {}
        for k, v in d.items():
            v = _decode_inf(v)
            if isinstance(v, list):
                v = tuple(v)
            kw[k] = v
        return cls(**kw)


def _decode_inf(v: Any) -> Any:
    if isinstance(v, str) and v in ("inf", "-inf", "+inf"):
        return float(v)
    if isinstance(v, (list, tuple)):
        return type(v)(_decode_inf(x) for x in v)
    return v


def decode_inf(v: Any) -> Any:
    """``"inf"``/``"-inf"`` strings (as JSON stores them) -> floats, recursively in lists/tuples."""
    return _decode_inf(v)


def tiny_config(**overrides: Any) -> Cut3rConfig:
    """A small random-weights config for tests and demos."""
    base = dict(
        enc_embed_dim=32,
        enc_depth=2,
        enc_num_heads=2,
        dec_embed_dim=32,
        dec_depth=3,
        dec_num_heads=2,
        state_size=16,
        state_dec_num_heads=4,
        local_mem_size=8,
        ray_enc_depth=1,
        dpt_feature_dim=16,
        dpt_last_dim=8,
        dpt_layer_dims=(8, 16, 24, 32),
        img_size=(64, 64),
    )
    base.update(overrides)
    return Cut3rConfig(**base)
