"""CUT3R geometry encoder in Flax NNX (see docs/cut3r.md)."""

from vlm3r_jax.models.cut3r.config import Cut3rConfig, tiny_config
from vlm3r_jax.models.cut3r.model import Carry, Cut3r, abstract_cut3r, forward_fn, init_cut3r, init_fn, step_fn

__all__ = [
    "Carry",
    "Cut3r",
    "abstract_cut3r",
    "init_cut3r",
    "Cut3rConfig",
    "forward_fn",
    "init_fn",
    "step_fn",
    "tiny_config",
]
