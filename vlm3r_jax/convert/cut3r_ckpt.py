"""CUT3R checkpoints: config parsing and loading with the reference's parameter names.

Two on-disk forms are understood:

* a directory with ``config.json`` + ``model.safetensors`` (state dict with the original names).
  ``config.json`` is either the golden-set style (``constructor_kwargs`` [+ ``dpt_override_for_tiny_model``])
  or our own :meth:`Cut3rConfig.to_dict` output;
* a released ``.pth``: ``{'model': state_dict, 'args': argparse.Namespace(model="ARCroco3DStereo(
  ARCroco3DStereoConfig(...))")}``, read with the pickle-free reader; the constructor string is
  parsed with :mod:`ast` (never ``eval``).

The DPT sizes, hard-coded in the reference, are inferred from the head tensors' shapes, so shrunken
test checkpoints load without overrides. Weights the computation never uses (the ray-map encoder,
``masked_*_token``, the duplicate ``scratch.layerK_rn`` names) are ignored.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlm3r_jax.convert.assign import (
    Layout,
    Permute,
    Src,
    conv_oihw_to_hwio,
    export_tensors,
    flat_variables,
    identity,
    load_state,
    per_layer_slots,
    transpose,
)
from vlm3r_jax.convert.errors import CheckpointError
from vlm3r_jax.convert.json_config import read_json_object
from vlm3r_jax.convert.safetensors_io import SafetensorsDir, save_safetensors
from vlm3r_jax.convert.sources import PrefixSource, TensorSource
from vlm3r_jax.convert.torch_pickle import TorchPickleSource
from vlm3r_jax.models.cut3r.config import Cut3rConfig, decode_inf
from vlm3r_jax.models.cut3r.model import Cut3r, abstract_cut3r

INF = math.inf

# Defaults of ARCroco3DStereoConfig.__init__ and CrocoConfig.__init__ (reference commit 8bc15dc):
# keys absent from a constructor string take these values, not our dataclass defaults.
REFERENCE_DEFAULTS: dict[str, Any] = {
    "output_mode": "pts3d",
    "head_type": "linear",
    "depth_mode": ("exp", -INF, INF),
    "conf_mode": ("exp", 1, INF),
    "pose_mode": ("exp", -INF, INF),
    "freeze": "none",
    "landscape_only": True,
    "patch_embed_cls": "PatchEmbedDust3R",
    "ray_enc_depth": 2,
    "state_size": 324,
    "local_mem_size": 256,
    "state_pe": "2d",
    "state_dec_num_heads": 16,
    "depth_head": False,
    "rgb_head": False,
    "pose_conf_head": False,
    "pose_head": False,
    # CrocoConfig
    "img_size": 224,
    "patch_size": 16,
    "mask_ratio": 0.9,
    "enc_embed_dim": 768,
    "enc_depth": 12,
    "enc_num_heads": 12,
    "dec_embed_dim": 512,
    "dec_depth": 8,
    "dec_num_heads": 16,
    "mlp_ratio": 4,
    "norm_im2_in_dec": True,
    "pos_embed": "cosine",
}
_IGNORED_KWARGS = {"mask_ratio", "norm_layer"}
_SAME_NAME = {
    "output_mode", "head_type", "depth_mode", "conf_mode", "pose_mode", "freeze", "landscape_only",
    "patch_embed_cls", "ray_enc_depth", "state_size", "local_mem_size", "state_pe", "state_dec_num_heads",
    "depth_head", "rgb_head", "pose_conf_head", "pose_head", "patch_size", "enc_embed_dim", "enc_depth",
    "enc_num_heads", "dec_embed_dim", "dec_depth", "dec_num_heads", "mlp_ratio", "norm_im2_in_dec", "pos_embed",
}  # fmt: skip


# --- constructor string ---------------------------------------------------------------------------
def _literal(node: ast.AST, src: str) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        vals = [_literal(e, src) for e in node.elts]
        return tuple(vals) if isinstance(node, ast.Tuple) else vals
    if isinstance(node, ast.Name) and node.id in ("inf", "nan"):
        return float(node.id)
    if isinstance(node, ast.Name) and node.id in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand, src)
        if not isinstance(v, (int, float)):
            raise ValueError(f"cannot negate {v!r}")
        return -v if isinstance(node.op, ast.USub) else v
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "float"
        and len(node.args) == 1
        and not node.keywords
    ):
        v = _literal(node.args[0], src)
        if isinstance(v, str) and v.strip().lower() in ("inf", "+inf", "-inf", "nan"):
            return float(v)
    raise ValueError(f"unsupported expression {ast.get_source_segment(src, node) or ast.dump(node)!r}")


def parse_constructor_string(s: str) -> dict[str, Any]:
    """``"ARCroco3DStereo(ARCroco3DStereoConfig(k=v, ...))"`` -> ``{k: v}`` without ``eval``: only
    literals, tuples/lists, ``inf``/``-inf`` and ``float('inf')`` are accepted."""
    try:
        tree = ast.parse(s.strip(), mode="eval")
    except SyntaxError as e:
        raise CheckpointError(f"cannot parse the CUT3R constructor string {s!r}: {e}") from e
    node = tree.body
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "ARCroco3DStereo":
        if len(node.args) != 1 or node.keywords:
            raise CheckpointError(f"expected ARCroco3DStereo(ARCroco3DStereoConfig(...)), got {s!r}")
        node = node.args[0]
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "ARCroco3DStereoConfig"):
        raise CheckpointError(f"expected ARCroco3DStereo(ARCroco3DStereoConfig(...)), got {s!r}")
    if node.args:
        raise CheckpointError(f"ARCroco3DStereoConfig takes keyword arguments only: {s!r}")
    out = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise CheckpointError(f"**kwargs are not supported in the constructor string {s!r}")
        try:
            out[kw.arg] = _literal(kw.value, s)
        except ValueError as e:
            raise CheckpointError(f"constructor argument {kw.arg}: {e}") from e
    return out


def config_from_reference_kwargs(kwargs: Mapping[str, Any], **overrides: Any) -> Cut3rConfig:
    """Reference constructor arguments (missing ones take the reference defaults) -> Cut3rConfig.
    ``overrides`` are Cut3rConfig fields applied last (e.g. ``dpt_feature_dim``)."""
    unknown = sorted(set(kwargs) - set(REFERENCE_DEFAULTS) - _IGNORED_KWARGS)
    if unknown:
        raise CheckpointError(f"unknown ARCroco3DStereoConfig arguments {unknown}")
    full = {**REFERENCE_DEFAULTS, **{k: decode_inf(v) for k, v in kwargs.items()}}
    # what the reference's load_model does before eval: ManyAR -> PatchEmbedDust3R, landscape_only=False
    if full["patch_embed_cls"] == "ManyAR_PatchEmbed":
        full["patch_embed_cls"] = "PatchEmbedDust3R"
    full["landscape_only"] = False
    kw = {k: full[k] for k in _SAME_NAME}
    for k in ("depth_mode", "conf_mode", "pose_mode"):
        kw[k] = tuple(kw[k])
    img = full["img_size"]
    kw["img_size"] = tuple(img) if isinstance(img, (list, tuple)) else (img, img)
    kw["mlp_ratio"] = float(kw["mlp_ratio"])
    kw.update(overrides)
    try:
        return Cut3rConfig(**kw)
    except ValueError as e:
        raise CheckpointError(str(e)) from e


def config_from_json(d: Mapping[str, Any]) -> Cut3rConfig:
    """Golden-style config.json (``constructor_kwargs`` + optional DPT override) or our own
    :meth:`Cut3rConfig.to_dict`."""
    if "constructor_kwargs" in d:
        over: dict[str, Any] = {}
        dpt = d.get("dpt_override_for_tiny_model") or d.get("dpt_override") or {}
        if "feature_dim" in dpt:
            over["dpt_feature_dim"] = int(dpt["feature_dim"])
        if "last_dim" in dpt:
            over["dpt_last_dim"] = int(dpt["last_dim"])
        if "layer_dims" in dpt:
            over["dpt_layer_dims"] = tuple(int(x) for x in dpt["layer_dims"])
        return config_from_reference_kwargs(d["constructor_kwargs"], **over)
    return Cut3rConfig.from_dict(d)


def infer_dpt_sizes(source: TensorSource) -> dict[str, Any]:
    """DPT ``feature_dim``/``last_dim``/``layer_dims`` read off the head's tensor shapes ({} if no head)."""
    keys = set(source.keys())
    p = "downstream_head.dpt_self."
    if f"{p}head.2.weight" not in keys:
        return {}
    out: dict[str, Any] = {"dpt_last_dim": int(source.shape(f"{p}head.2.weight")[0])}
    rn = f"{p}scratch.layer_rn.0.weight" if f"{p}scratch.layer_rn.0.weight" in keys else f"{p}scratch.layer1_rn.weight"
    if rn in keys:
        out["dpt_feature_dim"] = int(source.shape(rn)[0])
    dims = [f"{p}act_postprocess.{k}.0.weight" for k in range(4)]
    if all(k in keys for k in dims):
        out["dpt_layer_dims"] = tuple(int(source.shape(k)[0]) for k in dims)
    return out


# --- name map -------------------------------------------------------------------------------------
_CONV_T = re.compile(r".*act_postprocess\.[01]\.1\.kernel$")
_RENAMES = [
    (re.compile(r"^(encoder|decoder)\."), ""),
    (re.compile(r"^patch_embed\.(kernel|bias)$"), r"patch_embed.proj.\1"),
    (re.compile(r"^register_tokens$"), "register_tokens.weight"),
    (re.compile(r"(final_transform\.\d+\.norm[12])\.mlp\."), r"\1.mlp.1."),
    (re.compile(r"\.head\.head(\d)\."), r".head.\1."),
    (re.compile(r"\.(kernel|scale)$"), ".weight"),
]

IGNORED_SOURCE_KEYS = (
    r"patch_embed_ray_map\..*",
    r"enc_blocks_ray_map\..*",
    r"enc_norm_ray_map\..*",
    r"masked_img_token",
    r"masked_ray_map_token",
    r"downstream_head\.dpt_\w+\.scratch\.layer\d_rn\.weight",  # same modules as scratch.layer_rn.K
    r"mask_token",
    r"prediction_head\..*",
)


def torch_name(path: str) -> str:
    """Our dotted parameter path -> the reference state-dict key."""
    for pat, rep in _RENAMES:
        path = pat.sub(rep, path)
    return path


_CONV_TRANSPOSE = Permute((2, 3, 0, 1))  # torch ConvTranspose2d [in, out, kh, kw] <-> [kh, kw, in, out]


def _layout(path: str, ndim: int) -> Layout:
    """The layout of one (per-layer) parameter with ``ndim`` axes."""
    if path.endswith(".kernel") or path == "encoder.patch_embed.kernel":
        if ndim == 2:
            return transpose
        return _CONV_TRANSPOSE if _CONV_T.match(path) else conv_oihw_to_hwio
    return identity


def name_map(state: Any, source_keys: set[str] | None = None) -> dict[str, Src]:
    """``{our path: Src(reference key, layout)}`` for every variable of ``state``: what the loader
    reads and :func:`export_state_dict` writes. With ``source_keys`` given, known aliases are
    resolved (``scratch.layerK_rn`` for ``layer_rn.K-1``, ``dec_blocks`` for a missing
    ``dec_blocks_state`` as the reference's load_state_dict does)."""
    out = {}
    variables = flat_variables(state)
    for path, (stored, layer) in per_layer_slots(state).items():
        var = variables[stored]
        key = torch_name(path)
        if source_keys is not None and key not in source_keys:
            m = re.match(r"(.*scratch\.)layer_rn\.(\d)\.weight$", key)
            if m and f"{m.group(1)}layer{int(m.group(2)) + 1}_rn.weight" in source_keys:
                key = f"{m.group(1)}layer{int(m.group(2)) + 1}_rn.weight"
            elif (
                key.startswith("dec_blocks_state.")
                and key.replace("dec_blocks_state.", "dec_blocks.", 1) in source_keys
            ):
                key = key.replace("dec_blocks_state.", "dec_blocks.", 1)
        ndim = np.ndim(var.get_value()) if hasattr(var.get_value(), "ndim") else 0
        out[path] = Src(key, _layout(path, ndim - (layer is not None)))
    return out


def export_state_dict(state: Any) -> dict[str, np.ndarray]:
    """Our parameters -> a reference-named state dict (PyTorch layouts), e.g. to write a
    ``model.safetensors`` the reference can load (ray-map weights are not included)."""
    return export_tensors(state, name_map(state), what="CUT3R export")


class _StripModule:
    """A view of a source without the DDP ``module.`` prefix."""

    def __init__(self, inner: TensorSource):
        self._inner = inner

    def keys(self):
        return [k[len("module.") :] for k in self._inner.keys()]

    def shape(self, key: str):
        return self._inner.shape("module." + key)

    def get(self, key: str):
        return self._inner.get("module." + key)

    def where(self, key: str | None = None) -> str:
        return self._inner.where(None if key is None else "module." + key)


# --- loading --------------------------------------------------------------------------------------
def open_checkpoint(path: str) -> tuple[dict[str, Any] | Cut3rConfig, TensorSource]:
    """Returns (config or reference kwargs, state-dict source with reference names)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        cfg_path = os.path.join(path, "config.json")
        if not os.path.exists(cfg_path):
            pths = [f for f in os.listdir(path) if f.endswith(".pth")]
            if len(pths) == 1:
                return open_checkpoint(os.path.join(path, pths[0]))
            raise FileNotFoundError(
                f"{path}: no config.json (and not exactly one .pth); expected config.json + model.safetensors"
            )
        d = read_json_object(cfg_path)
        try:
            cfg = config_from_json(d)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{cfg_path}: {e}") from e
        return cfg, SafetensorsDir(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"CUT3R checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        return open_checkpoint(os.path.dirname(path) or ".")
    src = TorchPickleSource(path, allow_namespace=True)
    obj = src.obj
    if not isinstance(obj, dict) or "model" not in obj or "args" not in obj:
        raise CheckpointError(
            f"{path}: expected a released CUT3R checkpoint {{'model': state_dict, 'args': Namespace(model=...)}}; "
            f"got top-level keys {sorted(obj) if isinstance(obj, dict) else type(obj).__name__}. For a bare state "
            "dict, save it as model.safetensors next to a config.json"
        )
    args = obj["args"]
    ctor = getattr(args, "model", None) if not isinstance(args, dict) else args.get("model")
    if not isinstance(ctor, str):
        raise CheckpointError(f"{path}: args.model is not a constructor string ({type(ctor).__name__})")
    return parse_constructor_string(ctor), PrefixSource(src, "model.")


def load_cut3r(
    path: str,
    *,
    dtype: str = "float32",
    config_overrides: Mapping[str, Any] | None = None,
    shardings: Any = None,
) -> tuple[Cut3r, Cut3rConfig]:
    """Builds a :class:`Cut3r` from a checkpoint dir or ``.pth`` and loads its weights.

    ``dtype`` is the compute and parameter dtype; ``config_overrides`` are Cut3rConfig fields
    (e.g. ``{"rope_fp16_rounding": False}``); DPT sizes are read from the tensor shapes unless
    overridden here.
    """
    cfg_or_kwargs, source = open_checkpoint(path)
    keys = set(source.keys())
    if keys and all(k.startswith("module.") for k in keys):
        source = _StripModule(source)
        keys = set(source.keys())
    over = {**infer_dpt_sizes(source), "dtype": dtype, "param_dtype": dtype, **dict(config_overrides or {})}
    if isinstance(cfg_or_kwargs, Cut3rConfig):
        try:
            cfg = cfg_or_kwargs.replace(**over)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: {e}") from e
    else:
        cfg = config_from_reference_kwargs(cfg_or_kwargs, **over)
    graphdef, state = nnx.split(abstract_cut3r(cfg))
    mapping = name_map(state, keys)
    state = load_state(
        state,
        source,
        mapping,
        ignore=IGNORED_SOURCE_KEYS,
        dtype=jnp.dtype(dtype),
        shardings=shardings,
        what="CUT3R checkpoint",
    )
    return nnx.merge(graphdef, state), cfg


def save_cut3r_dir(model: Cut3r, path: str) -> None:
    """Writes ``config.json`` (our fields) + ``model.safetensors`` (reference names)."""
    os.makedirs(path, exist_ok=True)
    _, state = nnx.split(model)
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(model.cfg.to_dict(), f, indent=1)
    save_safetensors(os.path.join(path, "model.safetensors"), export_state_dict(state))


def random_params_like(model: Cut3r, seed: int = 0, scale: float = 0.05) -> None:
    """Adds N(0, scale^2) noise to every parameter in place, drawn on the host (tests: zero biases
    and unit norms would hide name-map mistakes)."""
    _, state = nnx.split(model)
    rng = np.random.default_rng(seed)
    for _, var in sorted(flat_variables(state).items()):
        v = np.asarray(var.get_value())
        var.set_value(jnp.asarray((v + scale * rng.normal(size=v.shape)).astype(v.dtype)))
