"""The LLaVA ``mm_projector`` (+ ``image_newline``) checkpoint names of
:class:`~vlm3r_jax.models.projector.VisionProjector`: the name map (read by the loaders, written by
the release export through :func:`vlm3r_jax.convert.assign.export_tensors`) and an in-place loader.

torch ``mm_projector`` is ``nn.Linear`` for ``linear`` (keys ``<prefix>weight``) and an
``nn.Sequential(Linear, GELU, Linear, ...)`` for ``mlpNx_gelu`` (keys ``<prefix>{0,2,...}.weight``);
our ``linears.{i}.kernel`` is the transposed ``[in, out]`` weight.
"""

from __future__ import annotations

import re
from typing import Any

from flax import nnx

from vlm3r_jax.convert.assign import Src, load_state, transpose
from vlm3r_jax.models.projector import ProjectorConfig, VisionProjector


def projector_mapping(
    cfg: ProjectorConfig,
    projector_prefix: str = "model.mm_projector.",
    newline_key: str | None = "model.image_newline",
) -> dict[str, Src]:
    """Name map between our paths and LLaVA checkpoint keys, for ``load_state`` and ``export_tensors``.

    torch ``mm_projector`` is ``nn.Linear`` for ``linear`` (keys ``<prefix>weight``) and an
    ``nn.Sequential(Linear, GELU, Linear, ...)`` for ``mlpNx_gelu`` (keys ``<prefix>{0,2,...}.weight``).
    """
    m: dict[str, Src] = {}
    for i in range(cfg.mlp_depth):
        base = projector_prefix if cfg.projector_type == "linear" else f"{projector_prefix}{2 * i}."
        m[f"linears.{i}.kernel"] = Src(base + "weight", transpose)
        m[f"linears.{i}.bias"] = Src(base + "bias")
    if cfg.has_newline:
        if newline_key is None:
            raise ValueError("the config has an image_newline; give newline_key")
        m["image_newline"] = Src(newline_key)
    return m


def load_projector_into(
    model: VisionProjector,
    source: Any,
    *,
    projector_prefix: str = "model.mm_projector.",
    newline_key: str | None = "model.image_newline",
) -> None:
    """Fills ``model`` in place from a TensorSource that holds (at least) the projector and the
    newline, e.g. a whole LLaVA checkpoint. Other tensors in ``source`` are ignored; missing or
    mis-shaped projector tensors raise one ``CheckpointError``."""
    mapping = projector_mapping(model.cfg, projector_prefix, newline_key)
    used = {k for src in mapping.values() for k in src.key_tuple}
    others = [re.escape(k) for k in source.keys() if k not in used]
    _, state = nnx.split(model)
    state = load_state(state, source, mapping, ignore=others, what=f"{model.cfg.projector_type} projector")
    nnx.update(model, state)
