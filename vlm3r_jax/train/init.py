"""From-scratch initialization in the Hugging Face convention, for models trained from random weights.

Our layers initialize Linear kernels variance-preserving (LeCun normal), the right default for
layers that are loaded or fine-tuned, while the Qwen2 embedding starts at N(0, 0.02) as in
transformers. Trained together from scratch, that leaves the projected video tokens about 300x
larger than the text embeddings they sit next to in the LLM input (per-token norm ~89 vs ~0.27 in
the tiny demo model), so a text token's identity is swamped at the first residual add.
transformers' ``_init_weights`` draws every Linear and Embedding weight from N(0,
``initializer_range``) with zero biases; applying that to the modules that start from scratch
puts both kinds of token on one scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlm3r_jax.layers.scan import is_stacked

# what starts from scratch in the demo; SigLIP keeps its own init (HF's SigLIP init is not N(0, 0.02))
FROM_SCRATCH_MODULES = ("llm", "mm_projector", "fusion_block")


def reinit_normal(model: nnx.Module, std: float, prefixes: Sequence[str], seed: int = 0) -> list[str]:
    """Redraw, in place, every 2-D ``kernel`` / ``embedding`` parameter under one of the top-level
    attributes ``prefixes`` from N(0, ``std``); biases and norm scales keep their values.
    Returns the dotted paths redrawn (for logs and tests; a layer stack is one path)."""
    if std <= 0:
        raise ValueError(f"initializer std must be > 0, got {std}")
    params = [(tuple(str(p) for p in path), node) for path, node in nnx.iter_graph(model)
              if isinstance(node, nnx.Param)]
    done = []
    for i, (names, var) in enumerate(sorted(params, key=lambda kv: kv[0])):
        value = var.get_value()
        stacked = is_stacked(var)  # a layer stack's [L, in, out] kernel is L 2-D kernels
        if names[0] not in prefixes or names[-1] not in ("kernel", "embedding") or value.ndim - stacked != 2:
            continue
        # host draws: one eager jax.random call per shape would compile once per shape
        draw = std * np.random.default_rng([seed, i]).standard_normal(value.shape, dtype=np.float32)
        var.set_value(jnp.asarray(draw, dtype=value.dtype))
        done.append(".".join(names))
    return done
