"""Export a :class:`~vlm3r_jax.models.vlm3r.VLM3R` to the released VLM-3R file layout (the
inverse of :mod:`vlm3r_jax.convert.vlm3r_release`), or to one merged LLaVA-Video-Qwen2 directory.

``layout="release"`` (what the official ``load_pretrained_model(lora_dir, base_dir)`` reads)::

    out/base_llava_video_qwen2/   config.json (LLaVA-Qwen keys, no spatial keys), model.safetensors
                                  (model.embed_tokens, model.layers.*, model.norm, lm_head, SigLIP under
                                  model.vision_tower.vision_tower.vision_model.*, model.image_newline,
                                  model.mm_projector.*), tokenizer files
    out/vlm3r_lora/               config.json (the VLM-3R config), adapter_config.json (PEFT 0.4 LoRA),
                                  adapter_model.bin|.safetensors (base_model.model.<module>.lora_{A,B}.weight),
                                  non_lora_trainables.bin (base_model.model.model.{mm_projector,fusion_block}.*)
    out/cut3r/cut3r_512_dpt_4_64.pth   {'model': CUT3R state dict, 'args': Namespace(model=<constructor>)}

``layout="merged"``: the LoRA folded into the Qwen2 kernels (``W + (alpha/r) B A``), everything in
one directory: config.json (VLM-3R config), model.safetensors (LLM + SigLIP + projector + newline +
fusion block), tokenizer files and the CUT3R ``.pth`` next to them.

``.bin``/``.pth`` files are written in torch's zip format without torch
(:func:`vlm3r_jax.convert.torch_save.save_torch`).

When the model was loaded from a released checkpoint (``source`` = the loader's ``info``), tensors
the model does not hold are copied through from the original files (``passthrough=True``): the
unused SigLIP ``post_layernorm``, embedding / LM-head rows past ``len(tokenizer)`` (the loader
cuts them, as the reference's ``resize_token_embeddings`` does), CUT3R's ray-map encoder and
``masked_*`` tokens and the DPT ``layerK_rn`` aliases; the original config.json files are used as
templates and the CUT3R constructor string is kept. See docs/export.md for what differs otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from typing import Any

import numpy as np
from flax import nnx

from vlm3r_jax.convert.errors import CheckpointError
from vlm3r_jax.convert.json_config import read_json_object
from vlm3r_jax.convert.release_layout import (
    BASE_DIR,
    CUT3R_FILE,
    LAYOUTS,
    LORA_DIR,
    NON_LORA_PREFIX,
    SIGLIP_PREFIX,
    TOKENIZER_FILES,
    component_tensors,
    constructor_string,
    llm_tensors,
    lora_tensors,
    peft_config,
    to_numpy,
    vision_tensors,
    vlm3r_config_json,
)
from vlm3r_jax.convert.safetensors_io import save_safetensors
from vlm3r_jax.convert.torch_pickle import TorchPickleSource
from vlm3r_jax.convert.torch_save import save_torch


def write_cut3r_pth(model: nnx.Module, path: str, *, source: str | None = None, passthrough: bool = True,
                    dtype: Any = None) -> None:
    """``{'model': state dict, 'args': Namespace(model=constructor string)}`` as a torch zip file.
    With ``source`` (the original .pth) and ``passthrough``: its extra tensors and constructor
    string are kept."""

    sd = component_tensors(model, "spatial_tower", dtype=dtype)
    ctor = None
    if source is not None and passthrough and os.path.isfile(source) and not source.endswith(".safetensors"):
        src = TorchPickleSource(source, allow_namespace=True)
        args = src.obj.get("args") if isinstance(src.obj, dict) else None
        ctor = getattr(args, "model", None) if not isinstance(args, dict) else args.get("model")
        for key in src.keys():
            if key.startswith("model.") and key[len("model."):] not in sd:
                sd[key[len("model."):]] = to_numpy(src.get(key), dtype)
    if ctor is None:
        ctor = constructor_string(model.cfg.geometry)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_torch(path, {"model": sd, "args": argparse.Namespace(model=ctor)})


def _write_json(path: str, d: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(d, f, indent=2)
        f.write("\n")


def _copy_tokenizer(tokenizer: Any, out_dir: str) -> None:
    src = getattr(tokenizer, "source", None)
    if not src or not os.path.isdir(src):
        raise CheckpointError(
            f"cannot write tokenizer files to {out_dir}: the tokenizer was not loaded from a directory "
            f"(source={src!r}); pass tokenizer=<a data_pipeline.tokenizer.QwenTokenizer.from_dir(...)>")
    copied = 0
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(src, name)):
            if os.path.abspath(src) != os.path.abspath(out_dir):
                shutil.copy(os.path.join(src, name), os.path.join(out_dir, name))
            copied += 1
    if not copied:
        raise CheckpointError(f"no tokenizer files ({TOKENIZER_FILES}) in {src}")


# --- the whole layout --------------------------------------------------------------------------------
def _base_tensors(model: nnx.Module, *, merge: bool, with_fusion: bool, source: dict | None, passthrough: bool,
                  dtype: Any, release: bool) -> tuple[dict[str, np.ndarray], int]:
    base = source.get("base") if (source and passthrough) else None
    # base: the original checkpoint gives back the embedding / LM-head rows past len(tokenizer)
    t = llm_tensors(model, merge=merge, dtype=dtype, fill=base)
    t.update(vision_tensors(model, dtype))
    t.update(component_tensors(model, "mm_projector", dtype=dtype))
    if with_fusion:
        t.update(component_tensors(model, "fusion_block", dtype=dtype))
    rows = t["model.embed_tokens.weight"].shape[0]  # what config.json's vocab_size must state
    if base is not None:
        for key in base.keys():
            if key.startswith(SIGLIP_PREFIX + "post_layernorm.") and not model.cfg.vision.use_post_layernorm:
                t[key] = to_numpy(base.get(key), dtype)  # the original (unused) values, not the identity
                continue
            if release and key.startswith("model.mm_projector."):
                # the original base projector: the trained one goes to non_lora_trainables.bin, which
                # overrides it at load time (reference and ours)
                t[key] = to_numpy(base.get(key), dtype)
                continue
            if key in t or key.startswith(("model.mm_projector.", "model.fusion_block.", "model.spatial_tower.")):
                continue
            # SigLIP layers the model lacks are never copied: the loader counts the layers in the file
            if key.startswith(SIGLIP_PREFIX + "post_layernorm.") or not key.startswith(SIGLIP_PREFIX):
                t[key] = to_numpy(base.get(key), dtype)
    return t, rows


def _template(source: dict | None, which: str) -> dict | None:
    if not source:
        return None
    if which == "lora":
        return source.get("config_json")
    p = os.path.join(source.get("base_dir") or "", "config.json")
    return read_json_object(p) if os.path.exists(p) else None


def export_release(model: nnx.Module, out_dir: str, *, tokenizer: Any, source: dict | None = None,
                   passthrough: bool = True, adapter_format: str = "bin", dtype: Any = None,
                   base_model_name: str = "", vision_tower: str | None = None) -> dict[str, str]:
    """Writes ``out_dir/{base_llava_video_qwen2, vlm3r_lora, cut3r/cut3r_512_dpt_4_64.pth}``.

    The model must carry its LoRA as attached adapters (load with ``keep_lora=True``, or a
    model trained with ``cfg.lora``): a merged model has lost the split, use ``layout="merged"``.
    ``adapter_format``: ``"bin"`` (what PEFT 0.4 writes), ``"safetensors"`` or ``"both"``.
    ``dtype`` casts every tensor (e.g. ``"bfloat16"``); None keeps the parameter dtypes.
    Returns the paths: ``{"base", "lora", "geometry"}`` (``api.load_vlm3r(lora, base=, geometry=)``).
    """
    if adapter_format not in ("bin", "safetensors", "both"):
        raise ValueError(f"adapter_format must be 'bin', 'safetensors' or 'both', got {adapter_format!r}")
    adapters, facts = lora_tensors(model, dtype)
    if not adapters:
        raise CheckpointError(
            "the model has no LoRA adapters attached, so there is nothing to write as a PEFT adapter: load it "
            "with keep_lora=True (api.load_vlm3r(..., keep_lora=True)) or export with layout='merged'")
    cfg = model.cfg
    base_dir, lora_dir = os.path.join(out_dir, BASE_DIR), os.path.join(out_dir, LORA_DIR)
    os.makedirs(base_dir, exist_ok=True)
    os.makedirs(lora_dir, exist_ok=True)

    base_t, rows = _base_tensors(model, merge=False, with_fusion=False, source=source, passthrough=passthrough,
                                 dtype=dtype, release=True)
    save_safetensors(os.path.join(base_dir, "model.safetensors"), base_t, {"format": "pt"})
    _write_json(os.path.join(base_dir, "config.json"),
                vlm3r_config_json(cfg, vocab_rows=rows, template=_template(source if passthrough else None, "base"),
                                  spatial=False, vision_tower=vision_tower))
    _copy_tokenizer(tokenizer, base_dir)

    _write_json(os.path.join(lora_dir, "config.json"),
                vlm3r_config_json(cfg, vocab_rows=rows, template=_template(source if passthrough else None, "lora"),
                                  spatial=True, vision_tower=vision_tower))
    _write_json(os.path.join(lora_dir, "adapter_config.json"), peft_config(facts, base_model_name))
    if adapter_format in ("bin", "both"):
        save_torch(os.path.join(lora_dir, "adapter_model.bin"), adapters)
    if adapter_format in ("safetensors", "both"):
        save_safetensors(os.path.join(lora_dir, "adapter_model.safetensors"), adapters, {"format": "pt"})
    non_lora = {NON_LORA_PREFIX + k: v for k, v in component_tensors(model, "mm_projector", dtype=dtype).items()
                if k.startswith("model.mm_projector.")}
    non_lora.update({NON_LORA_PREFIX + k: v for k, v in component_tensors(model, "fusion_block", dtype=dtype).items()})
    save_torch(os.path.join(lora_dir, "non_lora_trainables.bin"), non_lora)

    paths = {"base": base_dir, "lora": lora_dir, "geometry": None}
    if cfg.geometry is not None:
        pth = os.path.join(out_dir, "cut3r", CUT3R_FILE)
        write_cut3r_pth(model, pth, source=(source or {}).get("geometry"), passthrough=passthrough, dtype=dtype)
        paths["geometry"] = pth
    return paths


def export_merged(model: nnx.Module, out_dir: str, *, tokenizer: Any, source: dict | None = None,
                  passthrough: bool = True, dtype: Any = None, vision_tower: str | None = None) -> dict[str, str]:
    """One LLaVA-Video-Qwen2 directory with the LoRA merged: config.json (VLM-3R config),
    model.safetensors (incl. ``model.fusion_block.*`` and the trained projector), tokenizer files,
    and ``cut3r_512_dpt_4_64.pth``. Reload with ``api.load_vlm3r(out_dir)``."""
    cfg = model.cfg
    os.makedirs(out_dir, exist_ok=True)
    t, rows = _base_tensors(model, merge=True, with_fusion=True, source=source, passthrough=passthrough, dtype=dtype,
                            release=False)
    save_safetensors(os.path.join(out_dir, "model.safetensors"), t, {"format": "pt"})
    _write_json(os.path.join(out_dir, "config.json"),
                vlm3r_config_json(cfg, vocab_rows=rows, template=_template(source if passthrough else None, "lora"),
                                  spatial=True, vision_tower=vision_tower))
    _copy_tokenizer(tokenizer, out_dir)
    paths = {"base": out_dir, "lora": None, "geometry": None}
    if cfg.geometry is not None:
        pth = os.path.join(out_dir, CUT3R_FILE)
        write_cut3r_pth(model, pth, source=(source or {}).get("geometry"), passthrough=passthrough, dtype=dtype)
        paths["geometry"] = pth
    return paths


def export(model: nnx.Module, out_dir: str, *, layout: str = "release", **kwargs: Any) -> dict[str, str]:
    """Dispatch on ``layout`` (``"release"`` or ``"merged"``)."""
    if layout == "release":
        return export_release(model, out_dir, **kwargs)
    if layout == "merged":
        kwargs.pop("adapter_format", None)
        kwargs.pop("base_model_name", None)
        return export_merged(model, out_dir, **kwargs)
    raise ValueError(f"unknown export layout {layout!r}; valid: {LAYOUTS}")


def find_geometry(path: str) -> str | None:
    """The CUT3R checkpoint that an exported layout put next to ``path``: ``path/*.pth``,
    ``path/cut3r/*.pth`` or ``path/../cut3r/*.pth`` when exactly one exists there."""
    for d in (path, os.path.join(path, "cut3r"), os.path.join(os.path.dirname(os.path.abspath(path)), "cut3r")):
        if os.path.isdir(d):
            hits = sorted(f for f in os.listdir(d) if re.fullmatch(r".*\.pth", f))
            if len(hits) == 1:
                return os.path.join(d, hits[0])
    return None
