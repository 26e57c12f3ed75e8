"""vlm3r_jax: VLM-3R (arXiv 2505.20279) in JAX/Flax NNX.

Public entry points live in :mod:`vlm3r_jax.api`; see docs/architecture.md.
"""

__version__ = "0.1.0"
