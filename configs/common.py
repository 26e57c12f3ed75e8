"""Pieces shared by every run config: mesh and logical-axis rules, dtype policy."""

from __future__ import annotations

import ml_collections

from vlm3r_jax.sharding import DEFAULT_RULES


def mesh_config() -> ml_collections.ConfigDict:
    """``mesh.shape`` maps (data, fsdp, tensor) to sizes within one slice (-1 = the remaining
    devices); ``mesh.dcn_data``/``mesh.dcn_fsdp`` split data/fsdp across TPU slices or GPU nodes
    (1 = one slice; the mesh axis is then shape x dcn); ``mesh.rules`` maps logical axis names to
    mesh axes (see vlm3r_jax/sharding.py)."""
    c = ml_collections.ConfigDict()
    c.shape = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.dcn_data = 1
    c.dcn_fsdp = 1
    c.rules = tuple((name, axes) for name, axes in DEFAULT_RULES)
    return c


def dtype_config(accelerator: bool = False) -> ml_collections.ConfigDict:
    """The one dtype policy (vlm3r_jax/models/dtype_policy.py): trainable weights (LoRA, fusion,
    projector) and their Adam state in ``param_dtype`` float32; frozen weights stored and every
    tower computing in bfloat16 on accelerators, float32 on CPU. Norms, softmax, logits and the
    loss are float32 whatever these say."""
    c = ml_collections.ConfigDict()
    c.param_dtype = "float32"
    c.frozen_dtype = "bfloat16" if accelerator else "float32"
    c.compute_dtype = "bfloat16" if accelerator else "float32"
    return c
