"""The notebook-facing API (a contract: see docs/architecture.md, "Public API").

Each loader returns a small handle object that owns the parameters and jitted functions.
Every path argument also takes a Hugging Face Hub repo id, ``org/name`` or
``org/name@revision`` (:mod:`vlm3r_jax.convert.hub`; an existing local path wins).
"""

from __future__ import annotations

from typing import Any

from vlm3r_jax.convert import hub
from vlm3r_jax.infer.cut3r_geometry import Cut3rGeometry
from vlm3r_jax.infer.qwen2_lm import Qwen2LM
from vlm3r_jax.infer.siglip_vision import SiglipVision
from vlm3r_jax.infer.vlm3r_model import VLM3RModel


def load_qwen2(hf_dir: str, dtype: str = "float32") -> Any:
    """Loads a Hugging Face Qwen2 directory (config.json + safetensors [+ index]).

    Returns a :class:`vlm3r_jax.infer.qwen2_lm.Qwen2LM` with ``.logits(input_ids)`` and
    ``.generate(input_ids, max_new_tokens=n)``.
    """
    return Qwen2LM.from_pretrained(hub.resolve(hf_dir, hub.QWEN2_FILES, what="Qwen2 checkpoint"), dtype=dtype)


def load_siglip_vision(hf_dir: str, dtype: str = "float32") -> Any:
    """Loads a HF SigLIP directory (SiglipVisionModel or full SiglipModel weights).

    Returns a :class:`vlm3r_jax.infer.siglip_vision.SiglipVision` with ``.hidden_states(pixels)``
    and ``.features(pixels)``.
    """
    return SiglipVision.from_pretrained(hub.resolve(hf_dir, hub.SIGLIP_FILES, what="SigLIP checkpoint"), dtype=dtype)


def load_cut3r(path: str, dtype: str = "float32") -> Any:
    """Loads CUT3R from a dir with config.json + model.safetensors, or an original ``.pth``.

    Returns a :class:`vlm3r_jax.infer.cut3r_geometry.Cut3rGeometry` with ``.stream(frames)``
    and ``.tokens(frames)``.
    """
    return Cut3rGeometry.from_pretrained(hub.resolve(path, hub.CUT3R_FILES, what="CUT3R checkpoint"), dtype=dtype)


def load_vlm3r(path: str, base: str | None = None, geometry: str | None = None, **kwargs: Any) -> Any:
    """Loads a VLM-3R model: a checkpoint written by our trainer, or a released-format LoRA dir
    (adapter + non_lora_trainables.bin + config.json) with ``base`` = the LLaVA-Video-Qwen2 base
    dir and ``geometry`` = the CUT3R ``.pth`` (e.g. ``load_vlm3r("Journey9ni/vlm-3r-llava-qwen2-lora",
base="lmms-lab/LLaVA-NeXT-Video-7B-Qwen2", geometry="cut3r_512_dpt_4_64.pth")``).

    Returns a :class:`vlm3r_jax.infer.vlm3r_model.VLM3RModel` with ``.answer``, ``.logits``,
    ``.chat`` and ``.stream``.
    """
    return VLM3RModel.from_pretrained(path, base=base, geometry=geometry, **kwargs)
