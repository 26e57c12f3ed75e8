"""Thin entry points: ``python -m launch.<name>``."""
