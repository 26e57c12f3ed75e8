"""DPT output adapter of CUT3R (CroCo ``DPTOutputAdapter_fix``), NHWC.

Four hooks -> per-hook reassembly (1x1 conv + transposed conv / stride-2 conv) -> 3x3 ``layer_rn``
convs -> four RefineNet fusion stages with align_corners=True bilinear x2 upsampling -> head.
Sizes (``feature_dim``, ``last_dim``, ``layer_dims``) are constructor arguments; the reference
hard-codes 256 / 128 / [96, 192, 384, 768].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

_CONV_AXES = (None, None, "conv_in", "conv_out")


class Conv(nnx.Module):
    """Conv2d, kernel HWIO ``[k, k, in, out]``, symmetric padding."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int,
        *,
        stride: int = 1,
        padding: int = 0,
        use_bias: bool = True,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        self.stride = stride
        self.padding = padding
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (k, k, cin, cout), param_dtype), logical_axes=_CONV_AXES)
        self.bias = nnx.Param(jnp.zeros((cout,), param_dtype), logical_axes=("conv_out",)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, Cin] -> [B, H', W', Cout]."""
        k = self.kernel[...].astype(x.dtype)
        if k.shape[0] == 1 and self.stride == 1 and self.padding == 0:
            y = jnp.einsum("bhwc,co->bhwo", x, k[0, 0])
        else:
            p = self.padding
            y = jax.lax.conv_general_dilated(
                x,
                k,
                window_strides=(self.stride, self.stride),
                padding=((p, p), (p, p)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class ConvTranspose(nnx.Module):
    """ConvTranspose2d with kernel == stride and no padding (non-overlapping), kernel
    ``[k, k, in, out]`` (the reference's ``[in, out, k, k]`` transposed)."""

    def __init__(self, cin: int, cout: int, k: int, *, param_dtype: Any, rngs: nnx.Rngs):
        self.k = k
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (k, k, cin, cout), param_dtype), logical_axes=_CONV_AXES)
        self.bias = nnx.Param(jnp.zeros((cout,), param_dtype), logical_axes=("conv_out",))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, Cin] -> [B, k*H, k*W, Cout]."""
        y = jnp.einsum("bhwc,ijco->bhiwjo", x, self.kernel[...].astype(x.dtype))
        y = rearrange(y, "b h i w j o -> b (h i) (w j) o")
        return y + self.bias[...].astype(x.dtype)


def _interp_axis(x: jax.Array, axis: int, out: int) -> jax.Array:
    n = x.shape[axis]
    if n == 1:
        return jnp.repeat(x, out, axis=axis)
    # align_corners=True: output i samples input i * (n - 1) / (out - 1)
    scale = jnp.float32((n - 1) / (out - 1))
    src = jnp.arange(out, dtype=jnp.float32) * scale
    i0 = jnp.clip(jnp.floor(src).astype(jnp.int32), 0, n - 1)
    i1 = jnp.minimum(i0 + 1, n - 1)
    w1 = (src - i0.astype(jnp.float32)).astype(x.dtype)
    shape = [1] * x.ndim
    shape[axis] = out
    w1 = w1.reshape(shape)
    a = jnp.take(x, i0, axis=axis)
    b = jnp.take(x, i1, axis=axis)
    return a + (b - a) * w1


def upsample2x_align_corners(x: jax.Array) -> jax.Array:
    """Bilinear x2 upsampling with align_corners=True (PyTorch ``interpolate(scale_factor=2,
    mode="bilinear", align_corners=True)``), which ``jax.image.resize`` does not offer.
    x: [B, H, W, C] -> [B, 2H, 2W, C]."""
    x = _interp_axis(x, 1, 2 * x.shape[1])
    return _interp_axis(x, 2, 2 * x.shape[2])


class ResidualConvUnit(nnx.Module):
    """x + conv2(relu(conv1(relu(x))))."""

    def __init__(self, f: int, *, param_dtype: Any, rngs: nnx.Rngs):
        self.conv1 = Conv(f, f, 3, padding=1, param_dtype=param_dtype, rngs=rngs)
        self.conv2 = Conv(f, f, 3, padding=1, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.conv2(jax.nn.relu(self.conv1(jax.nn.relu(x))))


class FeatureFusionBlock(nnx.Module):
    """out = prev (+ RCU1(skip)); RCU2; bilinear x2 (align_corners); 1x1 out_conv."""

    def __init__(self, f: int, *, param_dtype: Any, rngs: nnx.Rngs):
        self.out_conv = Conv(f, f, 1, param_dtype=param_dtype, rngs=rngs)
        self.resConfUnit1 = ResidualConvUnit(f, param_dtype=param_dtype, rngs=rngs)
        self.resConfUnit2 = ResidualConvUnit(f, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, skip: jax.Array | None = None) -> jax.Array:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        return self.out_conv(upsample2x_align_corners(x))


class Scratch(nnx.Module):
    def __init__(self, layer_dims: Sequence[int], f: int, *, param_dtype: Any, rngs: nnx.Rngs):
        self.layer_rn = nnx.List(
            [Conv(c, f, 3, padding=1, use_bias=False, param_dtype=param_dtype, rngs=rngs) for c in layer_dims]
        )
        self.refinenet1 = FeatureFusionBlock(f, param_dtype=param_dtype, rngs=rngs)
        self.refinenet2 = FeatureFusionBlock(f, param_dtype=param_dtype, rngs=rngs)
        self.refinenet3 = FeatureFusionBlock(f, param_dtype=param_dtype, rngs=rngs)
        self.refinenet4 = FeatureFusionBlock(f, param_dtype=param_dtype, rngs=rngs)


class DPTHead(nnx.Module):
    """Regression head: conv3x3 (f -> f/2), bilinear x2 (align_corners), conv3x3 (f/2 -> last),
    ReLU, conv1x1 (last -> out). Named ``head0/head2/head4`` after the reference Sequential indices."""

    def __init__(self, f: int, last_dim: int, out: int, *, param_dtype: Any, rngs: nnx.Rngs):
        self.head0 = Conv(f, f // 2, 3, padding=1, param_dtype=param_dtype, rngs=rngs)
        self.head2 = Conv(f // 2, last_dim, 3, padding=1, param_dtype=param_dtype, rngs=rngs)
        self.head4 = Conv(last_dim, out, 1, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = upsample2x_align_corners(self.head0(x))
        return self.head4(jax.nn.relu(self.head2(x)))


class DPTOutputAdapter(nnx.Module):
    def __init__(
        self,
        dim_tokens: Sequence[int],
        out_channels: int,
        *,
        patch_size: int,
        feature_dim: int,
        last_dim: int,
        layer_dims: Sequence[int],
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        self.patch_size = patch_size
        ld = list(layer_dims)
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.act_postprocess = nnx.List(
            [
                nnx.List([Conv(dim_tokens[0], ld[0], 1, **kw), ConvTranspose(ld[0], ld[0], 4, **kw)]),
                nnx.List([Conv(dim_tokens[1], ld[1], 1, **kw), ConvTranspose(ld[1], ld[1], 2, **kw)]),
                nnx.List([Conv(dim_tokens[2], ld[2], 1, **kw)]),
                nnx.List([Conv(dim_tokens[3], ld[3], 1, **kw), Conv(ld[3], ld[3], 3, stride=2, padding=1, **kw)]),
            ]
        )
        self.scratch = Scratch(ld, feature_dim, **kw)
        self.head = DPTHead(feature_dim, last_dim, out_channels, **kw)

    def __call__(self, hooks: Sequence[jax.Array], image_hw: tuple[int, int]) -> jax.Array:
        """hooks: 4 token maps [B, N, C_k] (row-major patch grid) -> [B, H, W, out_channels]."""
        gh, gw = image_hw[0] // self.patch_size, image_hw[1] // self.patch_size
        layers = []
        for k, (tok, stage) in enumerate(zip(hooks, self.act_postprocess)):
            x = rearrange(tok, "b (h w) c -> b h w c", h=gh, w=gw)
            for m in stage:
                x = m(x)
            layers.append(self.scratch.layer_rn[k](x))
        l1, l2, l3, l4 = layers
        p4 = self.scratch.refinenet4(l4)[:, : l3.shape[1], : l3.shape[2]]
        p3 = self.scratch.refinenet3(p4, l3)
        p2 = self.scratch.refinenet2(p3, l2)
        p1 = self.scratch.refinenet1(p2, l1)
        return self.head(p1)
