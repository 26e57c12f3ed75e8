"""Notebook handle for a SigLIP vision tower (``vlm3r_jax.api.load_siglip_vision``)."""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vlm3r_jax.convert.hf_siglip import load_siglip_state
from vlm3r_jax.convert.safetensors_io import SafetensorsDir
from vlm3r_jax.models.siglip import SiglipVisionConfig, SiglipVisionModel, check_pixel_values

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _dtype(name: Any) -> Any:
    if isinstance(name, str):
        if name not in _DTYPES:
            raise ValueError(f"dtype {name!r} is not supported; use one of {sorted(_DTYPES)}")
        return _DTYPES[name]
    return jnp.dtype(name)


class SiglipVision:
    """Owns a loaded :class:`SiglipVisionModel` and its jitted forward functions.

    ``pixel_values`` everywhere: float [B, H, W, C] (NHWC), already normalised.
    """

    def __init__(self, model: SiglipVisionModel):
        self.cfg = model.cfg
        self.graphdef, self.state = nnx.split(model)

    @classmethod
    def from_pretrained(
        cls,
        hf_dir: str,
        dtype: str = "float32",
        *,
        config: SiglipVisionConfig | None = None,
        prefix: str | None = None,
        **config_kwargs: Any,
    ) -> SiglipVision:
        """Loads an HF SigLIP directory (``config.json`` + safetensors, sharded or not).

        The full tower is built by default (all layers, post_layernorm, head if the config has
        one). ``config_kwargs`` go to :meth:`SiglipVisionConfig.from_hf` (e.g. ``feature_layer=-2,
        use_post_layernorm=False, use_head=False`` for the LLaVA-Video tower); ``config`` replaces
        the config.json altogether. ``prefix`` overrides the auto-detected key prefix.
        """
        if not os.path.exists(hf_dir):
            raise FileNotFoundError(f"SigLIP checkpoint path does not exist: {hf_dir}")
        cfg = config if config is not None else SiglipVisionConfig.from_hf(hf_dir, **config_kwargs)
        dt = _dtype(dtype)
        source = SafetensorsDir(hf_dir)
        abstract = nnx.eval_shape(lambda: SiglipVisionModel(cfg, dtype=dt, param_dtype=dt, rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(abstract)
        state = load_siglip_state(state, source, cfg, prefix=prefix, dtype=dt)
        return cls(nnx.merge(graphdef, state))

    def _check(self, pixel_values: Any) -> jax.Array:
        if not hasattr(pixel_values, "shape") or not hasattr(pixel_values, "dtype"):
            raise TypeError(f"pixel_values must be an array [B, H, W, C], got {type(pixel_values).__name__}")
        check_pixel_values(pixel_values, self.cfg)
        return jnp.asarray(pixel_values)

    # public --------------------------------------------------------------------------------
    def hidden_states(self, pixel_values: Any) -> tuple[jax.Array, ...]:
        """[B, H, W, C] -> tuple of ``layers + 1`` arrays [B, P, D]: [0] embeddings, [i] after
        layer i (HF ``output_hidden_states``; no post_layernorm on any of them)."""
        x = self._check(pixel_values)
        return _forward(self.graphdef, self.state, x, hidden=True)["hidden_states"]

    def features(self, pixel_values: Any) -> jax.Array:
        """[B, H, W, C] -> [B, P, D]: HF ``last_hidden_state`` (post-layernorm when the config
        uses it, which it does for a plain HF checkpoint)."""
        x = self._check(pixel_values)
        return _features(self.graphdef, self.state, x)

    def pooled(self, pixel_values: Any) -> jax.Array:
        """[B, H, W, C] -> [B, D]: HF ``pooler_output`` (attention-pooling head)."""
        if not self.cfg.use_head:
            raise ValueError("this SigLIP tower was loaded without its pooling head (use_head=False)")
        x = self._check(pixel_values)
        return _forward(self.graphdef, self.state, x, hidden=False)["pooler_output"]


# Module-level jitted functions with ``graphdef`` static: one compilation per architecture,
# shared by every handle of it (the convention of every inference handle).
@functools.partial(jax.jit, static_argnames=("graphdef", "hidden"))
def _forward(graphdef: nnx.GraphDef, state: Any, pixel_values: jax.Array, *, hidden: bool) -> dict[str, Any]:
    return nnx.merge(graphdef, state)(pixel_values, output_hidden_states=hidden)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _features(graphdef: nnx.GraphDef, state: Any, pixel_values: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state).features(pixel_values)
