"""Inference handles (what :mod:`vlm3r_jax.api` returns), samplers and streaming mode."""
