"""SigLIP vision transformer (HF ``SiglipVisionModel`` architecture) in Flax NNX.

Structure (HF names in brackets): patch embedding [embeddings.patch_embedding] as a VALID
stride-``p`` convolution written as patchify + matmul, plus learned absolute position embeddings
[embeddings.position_embedding] (bicubically resized for other resolutions, exactly like HF's
``interpolate_pos_encoding=True``); ``num_layers_used`` pre-LN encoder blocks [encoder.layers.i]
(LayerNorm -> MHA -> residual, LayerNorm -> MLP(tanh-GELU) -> residual); optional
[post_layernorm] and attention-pooling [head].

VLM-3R / LLaVA-Video use the tower with its last layer deleted and no post-layernorm/head
(LLaVA-NeXT ``SigLipVisionTower``: ``del encoder.layers[-1:]``, ``head = Identity``, output
``hidden_states[-1]``). That is ``SiglipVisionConfig.from_hf(cfg, feature_layer=-2,
use_post_layernorm=False, use_head=False)``: only the used layers are built.

Input is NHWC float ``[B, H, W, C]``, already normalised (see ``data_pipeline.image_preprocess``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from vlm3r_jax.layers import LayerNorm, Linear, dot_product_attention
from vlm3r_jax.layers.activations import HF_ACTIVATIONS
from vlm3r_jax.layers.remat import check_policy
from vlm3r_jax.layers.scan import scan_layers, stack_modules
from vlm3r_jax.models.interpolate import interpolate_bicubic
from vlm3r_jax.sharding import constrain

_ACTS = HF_ACTIVATIONS  # the table a config.json hidden_act is looked up in

ACTIVATION_AXES = ("frames", "length", "act_embed")

# transformers' SiglipVisionConfig defaults (SigLIP base, patch16-224).
HF_VISION_DEFAULTS = dict(
    image_size=224, patch_size=16, num_channels=3, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
)


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig:
    """HF ``SiglipVisionConfig`` fields plus our selection of what to build/run.

    ``num_layers_used``: encoder layers built and run (None = all ``num_hidden_layers``);
    LLaVA-Video's tower uses ``num_hidden_layers - 1``. ``use_post_layernorm`` / ``use_head``:
    build and apply ``post_layernorm`` / the attention-pooling head.
    """

    image_size: int = 384
    patch_size: int = 14
    num_channels: int = 3
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    num_layers_used: int | None = None
    use_post_layernorm: bool = True
    use_head: bool = True
    attention_impl: str = "auto"
    remat: str = "none"  # per-layer rematerialization policy (vlm3r_jax/layers/remat.py)

    def __post_init__(self):
        check_policy(self.remat)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"SiglipVisionConfig: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in _ACTS:
            raise ValueError(f"SiglipVisionConfig: unsupported hidden_act {self.hidden_act!r}; known: {sorted(_ACTS)}")
        if not 0 <= self.layers <= self.num_hidden_layers:
            raise ValueError(
                f"SiglipVisionConfig: num_layers_used={self.num_layers_used} must be in "
                f"[0, num_hidden_layers={self.num_hidden_layers}]"
            )

    @property
    def layers(self) -> int:
        """Number of encoder layers built and run."""
        return self.num_hidden_layers if self.num_layers_used is None else self.num_layers_used

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches_per_side(self) -> int:
        """Grid side at ``image_size`` (27 for so400m-patch14-384): the position-table layout."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2

    @classmethod
    def from_hf(
        cls,
        config: Mapping[str, Any] | str,
        *,
        feature_layer: int | None = None,
        num_layers_used: int | None = None,
        use_post_layernorm: bool | None = None,
        use_head: bool | None = None,
        **overrides: Any,
    ) -> SiglipVisionConfig:
        """From an HF config dict or a ``config.json`` path / directory.

        Accepts a full ``SiglipModel`` config (its ``vision_config`` is used) or a
        ``SiglipVisionModel`` config. ``feature_layer`` selects the output like LLaVA's
        ``mm_vision_select_layer``: an index into HF's ``hidden_states`` tuple (``-1`` = last
        layer, ``-2`` = drop the last layer); it sets ``num_layers_used``. ``use_head`` defaults
        to HF's ``vision_use_head`` (True when absent).
        """
        if isinstance(config, str):
            path = os.path.join(config, "config.json") if os.path.isdir(config) else config
            try:
                with open(path, encoding="utf-8") as f:
                    config = json.load(f)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"SigLIP config not found: {path} (expected an HF config.json)") from e
        if not isinstance(config, dict) or not isinstance(config.get("vision_config") or {}, dict):
            raise ValueError(f"SigLIP config {config if isinstance(config, str) else ''} is not a JSON object of "
                             "settings; pass the SigLIP tower's config.json")
        d = dict(config)
        if "vision_config" in d:
            d = dict(d["vision_config"] or {})
        mt = d.get("model_type")
        if mt not in (None, "siglip_vision_model", "siglip"):
            raise ValueError(
                f"config model_type {mt!r} is not a SigLIP vision config; pass the SigLIP tower's config.json "
                "(model_type 'siglip' or 'siglip_vision_model')"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        hf_fields = names - {"num_layers_used", "use_post_layernorm", "use_head", "attention_impl", "remat"}
        # Keys absent from config.json mean transformers' defaults (it saves diffs against them),
        # which are SigLIP-base values, not the so400m defaults of this dataclass.
        kw: dict[str, Any] = {k: d.get(k, HF_VISION_DEFAULTS[k]) for k in hf_fields}
        n = int(kw["num_hidden_layers"])
        if feature_layer is not None:
            if num_layers_used is not None:
                raise ValueError("give feature_layer or num_layers_used, not both")
            idx = feature_layer if feature_layer >= 0 else n + 1 + feature_layer
            if not 0 <= idx <= n:
                raise ValueError(f"feature_layer {feature_layer} is out of range for {n} layers (hidden_states has {n + 1})")
            num_layers_used = idx
        kw["num_layers_used"] = num_layers_used
        kw["use_post_layernorm"] = True if use_post_layernorm is None else use_post_layernorm
        kw["use_head"] = bool(d.get("vision_use_head", True)) if use_head is None else use_head
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def llava_video(cls, config: Mapping[str, Any] | str, **overrides: Any) -> SiglipVisionConfig:
        """The tower as LLaVA-NeXT's ``SigLipVisionTower`` (used by LLaVA-Video and VLM-3R) runs it:
        last layer deleted, output read before ``post_layernorm``, no pooling head."""
        return cls.from_hf(config, feature_layer=-2, use_post_layernorm=False, use_head=False, **overrides)


def check_pixel_values(pixel_values: Any, cfg: SiglipVisionConfig) -> None:
    """Raises ValueError/TypeError naming the problem for pixels the tower cannot take."""
    c = cfg.num_channels
    shape = tuple(pixel_values.shape)
    if len(shape) != 4:
        raise ValueError(f"SigLIP pixel_values must be [B, H, W, {c}] (NHWC), got shape {shape}")
    if shape[-1] != c:
        hint = " (it looks NCHW: transpose with x.transpose(0, 2, 3, 1))" if shape[1] == c else ""
        raise ValueError(f"SigLIP pixel_values must have {c} channels last ([B, H, W, {c}]), got shape {shape}{hint}")
    if not jnp.issubdtype(pixel_values.dtype, jnp.floating):
        raise TypeError(
            f"SigLIP pixel_values must be floating point and already normalised, got {pixel_values.dtype}; "
            "run data_pipeline.image_preprocess.siglip_preprocess on uint8 frames first"
        )
    p = cfg.patch_size
    if shape[1] < p or shape[2] < p:
        raise ValueError(f"SigLIP pixel_values {shape[1]}x{shape[2]} is smaller than one {p}x{p} patch")


class SiglipAttention(nnx.Module):
    """Multi-head self-attention with biased q/k/v/out projections (HF ``SiglipAttention``)."""

    def __init__(self, cfg: SiglipVisionConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.cfg = cfg
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = Linear(d, d, axes=("embed", "heads"), **kw)
        self.k_proj = Linear(d, d, axes=("embed", "heads"), **kw)
        self.v_proj = Linear(d, d, axes=("embed", "heads"), **kw)
        self.out_proj = Linear(d, d, axes=("heads", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, T, D] -> [B, T, D]."""
        n, h = self.cfg.num_attention_heads, self.cfg.head_dim
        q = rearrange(self.q_proj(x), "b t (n h) -> b t n h", n=n, h=h)
        k = rearrange(self.k_proj(x), "b t (n h) -> b t n h", n=n, h=h)
        v = rearrange(self.v_proj(x), "b t (n h) -> b t n h", n=n, h=h)
        o = dot_product_attention(q, k, v, scale=h**-0.5, implementation=self.cfg.attention_impl)
        return self.out_proj(rearrange(o, "b t n h -> b t (n h)"))


class SiglipMLP(nnx.Module):
    def __init__(self, cfg: SiglipVisionConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Linear(cfg.hidden_size, cfg.intermediate_size, axes=("embed", "mlp"), **kw)
        self.fc2 = Linear(cfg.intermediate_size, cfg.hidden_size, axes=("mlp", "embed"), **kw)
        self.act = _ACTS[cfg.hidden_act]

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., D] -> [..., D]."""
        return self.fc2(self.act(self.fc1(x)))


class SiglipEncoderLayer(nnx.Module):
    """Pre-LN transformer block."""

    def __init__(self, cfg: SiglipVisionConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layer_norm1 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.self_attn = SiglipAttention(cfg, **kw)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.mlp = SiglipMLP(cfg, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, T, D] -> [B, T, D]."""
        x = x + self.self_attn(self.layer_norm1(x))
        x = x + self.mlp(self.layer_norm2(x))
        return constrain(x, ACTIVATION_AXES)


class SiglipPoolingHead(nnx.Module):
    """Attention pooling with a learned probe (HF ``SiglipMultiheadAttentionPoolingHead``,
    whose ``torch.nn.MultiheadAttention`` packs q/k/v into ``in_proj_weight``; we keep them split)."""

    def __init__(self, cfg: SiglipVisionConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.probe = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (1, 1, d), param_dtype), logical_axes=(None, None, "embed")
        )
        self.attention = SiglipAttention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layernorm = LayerNorm(d, eps=cfg.layer_norm_eps, param_dtype=param_dtype)
        self.mlp = SiglipMLP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.cfg = cfg

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, T, D] -> pooled [B, D]."""
        att = self.attention
        n, h = self.cfg.num_attention_heads, self.cfg.head_dim
        probe = jnp.broadcast_to(self.probe[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        q = rearrange(att.q_proj(probe), "b t (n h) -> b t n h", n=n, h=h)
        k = rearrange(att.k_proj(x), "b t (n h) -> b t n h", n=n, h=h)
        v = rearrange(att.v_proj(x), "b t (n h) -> b t n h", n=n, h=h)
        o = dot_product_attention(q, k, v, scale=h**-0.5, implementation=self.cfg.attention_impl)
        y = att.out_proj(rearrange(o, "b t n h -> b t (n h)"))
        y = y + self.mlp(self.layernorm(y))
        return y[:, 0]


class SiglipVisionModel(nnx.Module):
    """SigLIP vision tower. ``pixel_values``: float [B, H, W, C] (NHWC, normalised)."""

    def __init__(
        self,
        cfg: SiglipVisionConfig,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.cfg = cfg
        self.dtype = dtype
        p, c, d = cfg.patch_size, cfg.num_channels, cfg.hidden_size
        # HWIO conv kernel; torch's Conv2d default init scale is irrelevant (weights are loaded).
        self.patch_kernel = nnx.Param(
            nnx.initializers.lecun_normal()(rngs.params(), (p, p, c, d), param_dtype),
            logical_axes=("patch", "patch", "conv_in", "embed"),
        )
        self.patch_bias = nnx.Param(jnp.zeros((d,), param_dtype), logical_axes=("embed",))
        self.position_embedding = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (cfg.num_patches, d), param_dtype),
            logical_axes=("positions", "embed"),
        )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # one scanned stack (vlm3r_jax/layers/scan.py); None when no layer is used
        self.layers = (stack_modules([SiglipEncoderLayer(cfg, **kw) for _ in range(cfg.layers)], "layers")
                       if cfg.layers else None)
        self.post_layernorm = (
            LayerNorm(d, eps=cfg.layer_norm_eps, param_dtype=param_dtype) if cfg.use_post_layernorm else None
        )
        self.head = SiglipPoolingHead(cfg, **kw) if cfg.use_head else None

    # -- pieces -----------------------------------------------------------------------------
    def check_pixels(self, pixel_values: jax.Array) -> None:
        """Raises a clear error for inputs the tower cannot take (called at trace time)."""
        check_pixel_values(pixel_values, self.cfg)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(h, w)`` for an image; remainders are dropped like a VALID conv."""
        return height // self.cfg.patch_size, width // self.cfg.patch_size

    def position_embeddings(self, grid_h: int, grid_w: int) -> jax.Array:
        """[grid_h * grid_w, D]: the stored table, bicubically resized when the grid differs
        (HF ``interpolate_pos_encoding``: torch bicubic, align_corners=False, no antialias)."""
        table = self.position_embedding[...]
        s = self.cfg.num_patches_per_side
        if (grid_h, grid_w) == (s, s):
            return table
        grid = interpolate_bicubic(table.reshape(1, s, s, -1).astype(jnp.float32), (grid_h, grid_w))
        return grid.reshape(grid_h * grid_w, -1).astype(table.dtype)

    def embed(self, pixel_values: jax.Array, interpolate_pos_encoding: bool | None = None) -> jax.Array:
        """[B, H, W, C] -> [B, P, D] (patch embedding + position embedding).

        ``interpolate_pos_encoding``: None resizes the position table only when the grid differs
        from ``image_size``; False raises instead (as HF does without interpolation)."""
        self.check_pixels(pixel_values)
        dtype = self.dtype or pixel_values.dtype
        p = self.cfg.patch_size
        gh, gw = self.grid(pixel_values.shape[1], pixel_values.shape[2])
        s = self.cfg.num_patches_per_side
        if (gh, gw) != (s, s) and interpolate_pos_encoding is False:
            raise ValueError(
                f"image {pixel_values.shape[1]}x{pixel_values.shape[2]} gives a {gh}x{gw} patch grid but the "
                f"position table is {s}x{s} (image_size {self.cfg.image_size}); resize the frames or pass "
                "interpolate_pos_encoding=True"
            )
        x = pixel_values[:, : gh * p, : gw * p, :].astype(dtype)
        patches = rearrange(x, "b (h ph) (w pw) c -> b (h w) (ph pw c)", ph=p, pw=p)
        kernel = self.patch_kernel[...].astype(dtype).reshape(p * p * self.cfg.num_channels, -1)
        emb = jnp.einsum("bpk,kd->bpd", patches, kernel) + self.patch_bias[...].astype(dtype)
        emb = emb + self.position_embeddings(gh, gw).astype(dtype)[None]
        return constrain(emb, ACTIVATION_AXES)

    def __call__(
        self,
        pixel_values: jax.Array,
        *,
        output_hidden_states: bool = False,
        interpolate_pos_encoding: bool | None = None,
    ) -> dict[str, Any]:
        """pixel_values: float [B, H, W, C] -> dict with

        * ``last_hidden_state`` [B, P, D]: output of the last used layer, after post_layernorm
          when ``use_post_layernorm``.
        * ``hidden_states`` (if requested): tuple of ``layers + 1`` arrays [B, P, D]: [0] the
          embeddings, [i] the output of layer i (HF ``output_hidden_states`` layout).
        * ``pooler_output`` [B, D] when ``use_head``.
        """
        emb = self.embed(pixel_values, interpolate_pos_encoding)
        x, ys = self.encode(emb, keep=output_hidden_states)
        states = (emb, *ys) if output_hidden_states else None
        if self.post_layernorm is not None:
            x = self.post_layernorm(x)
        out: dict[str, Any] = {"last_hidden_state": x}
        if states is not None:
            out["hidden_states"] = tuple(states)
        if self.head is not None:
            out["pooler_output"] = self.head(x)
        return out

    def features(self, pixel_values: jax.Array, interpolate_pos_encoding: bool | None = None) -> jax.Array:
        """[B, H, W, C] -> [B, P, D]: ``last_hidden_state`` without running the head."""
        x, _ = self.encode(self.embed(pixel_values, interpolate_pos_encoding))
        return self.post_layernorm(x) if self.post_layernorm is not None else x

    def encode(self, x: jax.Array, keep: bool = False) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """x [B, P, D] through the scanned layers -> (output [B, P, D], each layer's output
        [B, P, D] when ``keep``, else ())."""
        if self.layers is None:
            return x, ()

        def body(layer: SiglipEncoderLayer, h: jax.Array, _: None) -> tuple[jax.Array, jax.Array | None]:
            h = layer(h)
            return h, (h if keep else None)

        x, ys = scan_layers(self.layers, body, x, policy=self.cfg.remat)
        return x, (tuple(ys[i] for i in range(self.cfg.layers)) if keep else ())
