"""Checkpoint readers/writers and name maps (HF safetensors, CUT3R .pth, released VLM-3R)."""

from vlm3r_jax.convert.errors import CheckpointError
from vlm3r_jax.convert.safetensors_io import SafetensorsDir, save_safetensors
from vlm3r_jax.convert.sources import DictSource, PrefixSource, TensorSource

__all__ = ["CheckpointError", "DictSource", "PrefixSource", "SafetensorsDir", "TensorSource", "save_safetensors"]
