"""Which parameters train. As in the paper: LoRA adapters, the fusion block and the projector;
SigLIP, CUT3R, embeddings and the base LLM stay frozen. Frozen parameters are split off before
``jax.value_and_grad`` so they get neither gradients nor optimizer state."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from flax import nnx

from vlm3r_jax.models.lora import LoRAParam


def trainable_filter(patterns: Sequence[str], include_lora: bool = True):
    """An NNX filter: LoRA adapters (if ``include_lora``) and every ``nnx.Param`` whose dotted
    path fullmatches one of ``patterns`` (e.g. ``r"fusion\\..*"``, ``r".*"`` for full fine-tuning)."""
    pats = [re.compile(p) for p in patterns]

    def keep(path: tuple, var: Any) -> bool:
        if not isinstance(var, nnx.Param):
            return False
        if include_lora and isinstance(var, LoRAParam):
            return True
        dotted = ".".join(str(p) for p in path)
        return any(p.fullmatch(dotted) for p in pats)

    return keep


def split_trainable(model: nnx.Module, patterns: Sequence[str], include_lora: bool = True):
    """``(graphdef, trainable_state, frozen_state)``; ``nnx.merge(graphdef, trainable, frozen)``
    rebuilds the model. ``frozen_state`` holds frozen params and every non-param variable."""
    graphdef, trainable, frozen = nnx.split(model, trainable_filter(patterns, include_lora), ...)
    if not nnx.to_flat_state(trainable):
        raise ValueError(
            f"no trainable parameters: patterns {list(patterns)} matched nothing and no LoRA adapters "
            "are attached. Check config.train.trainable against the model's parameter paths."
        )
    return graphdef, trainable, frozen
