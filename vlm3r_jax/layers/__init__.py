"""Small building blocks shared by every network (all params carry logical axis names)."""

from vlm3r_jax.layers.attention import dot_product_attention
from vlm3r_jax.layers.embed import Embed
from vlm3r_jax.layers.linear import Linear
from vlm3r_jax.layers.norms import LayerNorm, RMSNorm

__all__ = ["Embed", "LayerNorm", "Linear", "RMSNorm", "dot_product_attention"]
