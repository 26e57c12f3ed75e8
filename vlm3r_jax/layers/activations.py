"""Activations, defined once: the exact (erf) GELU that torch's ``nn.GELU()`` computes by default
(jax's own default is the tanh approximation, so every torch-parity block must ask for this one),
and the Hugging Face ``ACT2FN`` names a ``config.json`` may give as ``hidden_act``."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gelu_exact(x: jax.Array) -> jax.Array:
    """PyTorch ``nn.GELU()`` / HF ``"gelu"``: ``x * Phi(x)`` with the erf form."""
    return jax.nn.gelu(x, approximate=False)


def gelu_tanh(x: jax.Array) -> jax.Array:
    """PyTorch ``nn.GELU(approximate="tanh")`` / HF ``"gelu_pytorch_tanh"`` (SigLIP's)."""
    return jax.nn.gelu(x, approximate=True)


HF_ACTIVATIONS = {
    # HF ACT2FN names -> jax. SigLIP uses the tanh approximation ("gelu_pytorch_tanh").
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_new": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "gelu": gelu_exact,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    # the rest of transformers' ACT2FN (no released SigLIP uses them; random test configs may)
    "swish": jax.nn.silu,
    "gelu_python": gelu_exact,
    "gelu_python_tanh": gelu_tanh,
    "gelu_accurate": gelu_tanh,
    "gelu_10": lambda x: jnp.clip(jax.nn.gelu(x, approximate=False), -10.0, 10.0),
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
    "relu6": jax.nn.relu6,
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.01),
    "hardswish": jax.nn.hard_swish,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    # transformers' LaplaceActivation defaults: mu = sqrt(1/2), sigma = sqrt(1/(4 pi))
    "laplace": lambda x: 0.5 * (1.0 + jax.lax.erf((x - 0.707107) / (0.282095 * 2.0**0.5))),
    "sqrtsoftplus": lambda x: jnp.sqrt(jax.nn.softplus(x)),
}
