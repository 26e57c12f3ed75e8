"""Our own VLM-3R checkpoint format: ``vlm3r_config.json`` (every sub-config), ``model.safetensors``
(parameters under their dotted NNX paths) and the tokenizer files. Written by
``VLM3RModel.save_pretrained`` and the trainer's export; read by ``api.load_vlm3r(dir)``."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax.numpy as jnp
from flax import nnx

from vlm3r_jax.convert.assign import Src, flat_arrays, load_state, param_slots
from vlm3r_jax.convert.errors import CheckpointError
from vlm3r_jax.convert.json_config import read_json_object
from vlm3r_jax.convert.safetensors_io import SafetensorsDir, save_safetensors
from vlm3r_jax.models.cut3r.config import Cut3rConfig
from vlm3r_jax.models.dtype_policy import DtypeOf, cast_params
from vlm3r_jax.models.fusion import FusionConfig
from vlm3r_jax.models.host_init import fill_abstract_rng
from vlm3r_jax.models.lora import LoRAConfig
from vlm3r_jax.models.projector import ProjectorConfig
from vlm3r_jax.models.qwen2 import Qwen2Config
from vlm3r_jax.models.siglip import SiglipVisionConfig
from vlm3r_jax.models.vlm3r import VLM3RConfig, abstract_vlm3r

CONFIG = "vlm3r_config.json"
WEIGHTS = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt")
FORMAT_VERSION = 1


def _tuplify(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_tuplify(v) for v in x)
    return x


def _dc(cls, d: dict | None):
    if d is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise CheckpointError(f"{CONFIG}: unknown {cls.__name__} fields {unknown}; written by a newer vlm3r_jax?")
    return cls(**{k: _tuplify(v) for k, v in d.items()})


def config_to_dict(cfg) -> dict:
    d = {"format_version": FORMAT_VERSION, **dataclasses.asdict(cfg)}
    if cfg.geometry is not None:
        d["geometry"] = cfg.geometry.to_dict()  # its own encoding of inf bounds
    return d


def config_from_dict(d: dict):
    d = dict(d)
    d.pop("format_version", None)
    d.pop("num_frames", None)  # an inference default (see read_num_frames), not part of the network
    subs = dict(llm=Qwen2Config, vision=SiglipVisionConfig, projector=ProjectorConfig, fusion=FusionConfig,
                lora=LoRAConfig)
    kw = {k: (_dc(subs[k], v) if k in subs else _tuplify(v)) for k, v in d.items() if k != "geometry"}
    kw["geometry"] = None if d.get("geometry") is None else Cut3rConfig.from_dict(d["geometry"])
    return VLM3RConfig(**kw)


def save_ours(path: str, cfg, model, tokenizer=None, dtype: Any = None, num_frames: int | None = None) -> None:
    """Writes the three parts; the weights file is written atomically (tmp + rename).
    ``num_frames``: frames per video the model was trained with, stored next to the config (as
    LLaVA-Video's ``frames_upbound``) so that loading the model samples videos the same way."""
    os.makedirs(path, exist_ok=True)
    _, params, _ = nnx.split(model, nnx.Param, ...)
    tensors = flat_arrays(params)
    if dtype is not None:
        tensors = {k: v.astype(jnp.dtype(dtype)) for k, v in tensors.items()}
    save_safetensors(os.path.join(path, WEIGHTS), tensors, {"format": "vlm3r_jax", "version": str(FORMAT_VERSION)})
    d = config_to_dict(cfg)
    if num_frames is not None:
        d["num_frames"] = int(num_frames)
    with open(os.path.join(path, CONFIG), "w", encoding="utf-8") as f:
        json.dump(d, f, indent=1)
    src = getattr(tokenizer, "source", None)
    if src and os.path.isdir(src) and os.path.abspath(src) != os.path.abspath(path):
        for name in TOKENIZER_FILES:
            if os.path.exists(os.path.join(src, name)):
                shutil.copy(os.path.join(src, name), os.path.join(path, name))


def read_num_frames(path: str) -> int | None:
    """The frames-per-video a checkpoint written by :func:`save_ours` was trained with, if recorded."""
    try:
        n = read_json_object(os.path.join(path, CONFIG)).get("num_frames")
    except (OSError, ValueError):
        return None
    return int(n) if isinstance(n, int) and n > 0 else None


def load_ours(path: str, dtype: str | None = None, shardings: Any = None, param_dtypes: DtypeOf | None = None):
    """-> (config, model) from a directory written by :func:`save_ours`. ``param_dtypes`` (see
    models/dtype_policy.py) stores each parameter in its own dtype, as :func:`load_release` does."""

    cfg_path = os.path.join(path, CONFIG)
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: not a vlm3r_jax checkpoint directory")
    try:
        cfg = config_from_dict(read_json_object(cfg_path))
    except (TypeError, KeyError) as e:
        raise CheckpointError(f"{cfg_path}: {type(e).__name__}: {e}; re-export the checkpoint") from e
    if dtype is not None:
        cfg = cfg.replace(llm=cfg.llm.replace(dtype=dtype, param_dtype=dtype))
    abstract = abstract_vlm3r(cfg)
    graphdef, state = nnx.split(abstract)
    if param_dtypes is not None:
        state = cast_params(state, param_dtypes)
    # the file holds one tensor per layer (as before layer stacks), so older checkpoints still load
    mapping = {k: Src(k) for k in param_slots(state)}
    state = load_state(state, SafetensorsDir(os.path.join(path, WEIGHTS)), mapping, shardings=shardings,
                       what="vlm3r_jax checkpoint")

    return cfg, nnx.merge(graphdef, fill_abstract_rng(state))
