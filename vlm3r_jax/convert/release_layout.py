"""The released VLM-3R layout: one name map per component (:func:`release_maps`: our parameter
path -> reference key and invertible layout), which :mod:`vlm3r_jax.convert.vlm3r_release` loads
through and :mod:`vlm3r_jax.convert.vlm3r_export` writes through (``*_tensors``: numpy arrays in
torch layouts); the file and directory names; and the config files (``config.json``, the PEFT
``adapter_config.json``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from flax import nnx

from vlm3r_jax.convert.assign import Src, export_tensors, transpose
from vlm3r_jax.convert.cut3r_ckpt import name_map
from vlm3r_jax.convert.errors import CheckpointError
from vlm3r_jax.convert.fusion_ckpt import reference_mapping
from vlm3r_jax.convert.hf_qwen2 import hf_mapping
from vlm3r_jax.convert.hf_siglip import LLAVA_VISION_PREFIX, siglip_mapping
from vlm3r_jax.convert.llava_projector import projector_mapping
from vlm3r_jax.models.fusion import reference_heads
from vlm3r_jax.models.lora import lora_layers
from vlm3r_jax.models.qwen2 import Qwen2Config

BASE_DIR = "base_llava_video_qwen2"
LORA_DIR = "vlm3r_lora"
CUT3R_FILE = "cut3r_512_dpt_4_64.pth"  # the name the reference hard-codes (CUT3R/src/<this>)
PEFT_PREFIX = "base_model.model."
NON_LORA_PREFIX = "base_model.model."  # + "model.mm_projector..." / "model.fusion_block..."
SIGLIP_PREFIX = LLAVA_VISION_PREFIX
FUSION_PREFIX = "model.fusion_block."
LORA_KEY = "lora:"  # marks the PEFT adapter file's keys in the LLM map (a second file, one load pass)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "generation_config.json")
LAYOUTS = ("release", "merged")
# values the reference hard-codes; other values are written under extra config keys that only
# vlm3r_jax reads (the official code would silently use its constants)
REFERENCE_GEOMETRY_SIZE = (432, 432)
DEFAULT_VISION_TOWER = "google/siglip-so400m-patch14-384"

# spatial / fusion keys of the VLM-3R config.json that a plain LLaVA-Video base config lacks
_SPATIAL_KEYS = ("spatial_tower", "mm_spatial_tower", "spatial_feature_dim", "spatial_tower_select_feature",
                 "fusion_block", "tune_fusion_block", "tune_spatial_tower", "fusion_num_heads",
                 "spatial_tower_image_size")


# --- tensors: one name map per component, read by vlm3r_release and written by vlm3r_export ---------
def to_numpy(x: Any, dtype: Any) -> np.ndarray:
    a = np.asarray(x)
    return np.ascontiguousarray(a.astype(dtype) if dtype is not None and a.dtype != np.dtype(dtype) else a)


def peft_key(weight_key: str, which: str) -> str:
    """``model.layers.0.self_attn.q_proj.weight``, ``"A"`` -> the PEFT adapter key
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``."""
    return f"{PEFT_PREFIX}{weight_key[: -len('.weight')]}.lora_{which}.weight"


def with_adapters(llm_rules: dict[str, Src], lora_modules: Iterable[str]) -> dict[str, Src]:
    """``llm_rules`` (the Qwen2 under HF names) plus the PEFT adapters of ``lora_modules``
    (per-layer Linear paths, ``"layers.0.attn.q"``): ``lora.lora_a`` [in, r] <-> ``lora:<peft_key
    A>`` [r, in], ``lora.lora_b`` [r, out] <-> ``lora:<peft_key B>`` [out, r]; ``lora:`` marks the
    adapter file (:data:`LORA_KEY`)."""
    m = dict(llm_rules)
    for mod in lora_modules:
        weight = m[mod + ".kernel"].keys
        m[f"{mod}.lora.lora_a"] = Src(LORA_KEY + peft_key(weight, "A"), transpose)
        m[f"{mod}.lora.lora_b"] = Src(LORA_KEY + peft_key(weight, "B"), transpose)
    return m


def llm_map(cfg: Qwen2Config, lora_modules: Iterable[str] = ()) -> dict[str, Src]:
    """The Qwen2 under HF names, its vocabulary cut to ``cfg.vocab_size`` rows, plus the PEFT
    adapters of ``lora_modules`` (:func:`with_adapters`)."""
    return with_adapters(hf_mapping(cfg, truncate_vocab=True), lora_modules)


COMPONENTS = ("llm", "vision_tower", "mm_projector", "fusion_block", "spatial_tower")


def component_map(cfg: Any, name: str, part_state: Any, *, lora_modules: Iterable[str] = (),
                  cut3r_keys: set[str] | None = None) -> dict[str, Src]:
    """The released layout's name map of one VLM-3R submodule ``name`` (:data:`COMPONENTS`) of a
    model with config ``cfg``; ``part_state``: that submodule's (abstract or concrete) state,
    which the fusion block's and CUT3R's maps follow. ``lora_modules``: the LLM's adapted
    Linears; ``cut3r_keys``: the CUT3R checkpoint's keys, to resolve its aliases on load."""
    if name == "llm":
        return llm_map(cfg.llm, lora_modules)
    if name == "vision_tower":
        return siglip_mapping(cfg.vision, SIGLIP_PREFIX)
    if name == "mm_projector":
        return projector_mapping(cfg.projector)
    if name == "fusion_block":
        return reference_mapping(part_state, FUSION_PREFIX)
    if name == "spatial_tower":
        return name_map(part_state, cut3r_keys)
    raise ValueError(f"unknown VLM-3R submodule {name!r}; valid: {COMPONENTS}")


def release_maps(cfg: Any, state: Any, *, lora_modules: Iterable[str] = (),
                 cut3r_keys: set[str] | None = None) -> dict[str, dict[str, Src]]:
    """The released layout as ``{VLM-3R submodule: name map}`` (:func:`component_map` of each)
    for a model with config ``cfg`` and (abstract or concrete) ``state``. Keys are the base
    directory's (LLM, SigLIP, projector, fusion block), ``lora:`` + the adapter file's, and the
    CUT3R ``.pth``'s ``model`` dict's."""
    names = COMPONENTS if cfg.geometry is not None else COMPONENTS[:3]
    return {n: component_map(cfg, n, state[n], lora_modules=lora_modules, cut3r_keys=cut3r_keys) for n in names}


def lora_paths(model: nnx.Module) -> list[str]:
    """Per-layer paths (under the LLM) of the Linears that carry an adapter."""
    return [path for path, _, _ in lora_layers(model.llm)]


# what a component exports by default: its parameters less LoRA adapters (a separate file)
_BASE_PARAMS = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


def component_tensors(model: nnx.Module, name: str, *, adapters: bool = False, dtype: Any = None,
                      fill: Any = None) -> dict[str, np.ndarray]:
    """``{reference key: array}`` of ``model.<name>``'s parameters through the released layout's
    map: its base parameters, or with ``adapters`` its PEFT adapters (``lora:`` keys); {} when the
    model lacks that part. ``fill``: the original checkpoint, for the vocabulary rows cut on load."""
    part = getattr(model, name)
    if part is None:
        return {}
    mapping = component_map(model.cfg, name, nnx.state(part, nnx.Param),
                            lora_modules=lora_paths(model) if name == "llm" else ())
    # the adapters go to their own file: each export takes its half of the map, and all of that half
    mapping = {k: v for k, v in mapping.items() if v.key_tuple[0].startswith(LORA_KEY) == adapters}
    out = export_tensors(nnx.state(part, nnx.LoRAParam if adapters else _BASE_PARAMS), mapping, fill=fill,
                         what=f"{name} export")
    return {k: to_numpy(v, dtype) for k, v in out.items()}


def _lora_modules(llm: nnx.Module) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """{per-layer Linear path under the LLM ("layers.0.attn.q"): (kernel [in, out], A [in, r],
    B [r, out], scale)} for Linears with an adapter (layer stacks give one entry per layer)."""

    out = {}
    for path, lin, i in lora_layers(llm):
        k, a, b = (np.asarray(x[...]) for x in (lin.kernel, lin.lora.lora_a, lin.lora.lora_b))
        out[path] = (k, a, b, float(lin.lora.scale)) if i is None else (k[i], a[i], b[i], float(lin.lora.scale))
    return out


def llm_tensors(model: nnx.Module, *, merge: bool, dtype: Any = None, fill: Any = None) -> dict[str, np.ndarray]:
    """The Qwen2 weights with HF names (``fill``: see :func:`component_tensors`). ``merge``:
    attached LoRA adapters are folded into their kernels (float32 arithmetic, like PEFT's
    ``merge_and_unload``), a computed value written through the kernel's layout; otherwise the
    base kernels."""

    out = component_tensors(model, "llm", fill=fill)
    if merge:
        mapping = llm_map(model.llm.cfg)
        for path, (k, a, b, scale) in _lora_modules(model.llm).items():
            src = mapping[path + ".kernel"]
            merged = k.astype(np.float32) + scale * (a.astype(np.float32) @ b.astype(np.float32))
            out[src.keys] = np.ascontiguousarray(src.fn.save(merged.astype(k.dtype)))
    return {k: to_numpy(v, dtype) for k, v in out.items()}


def lora_tensors(model: nnx.Module, dtype: Any = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """PEFT adapter state dict (``base_model.model.<HF module>.lora_A.weight`` [r, in], ``lora_B``
    [out, r]) and the facts for adapter_config.json (r, alpha, dropout, target_modules)."""

    if not lora_paths(model):
        return {}, {}
    tensors = {k[len(LORA_KEY):]: v for k, v in
               component_tensors(model, "llm", adapters=True, dtype=dtype).items()}
    a_keys = [k for k in tensors if k.endswith(".lora_A.weight")]
    targets = sorted(k[len(PEFT_PREFIX): -len(".lora_A.weight")] for k in a_keys)
    # from the exported adapters (A [r, in]) and the modules' scales: no base kernel leaves the device
    ranks = {tensors[k].shape[0] for k in a_keys}
    scales = {float(lin.lora.scale) for _, lin, _ in lora_layers(model.llm)}
    if len(ranks) != 1 or len(scales) != 1:
        raise CheckpointError(f"PEFT's adapter_config.json holds one r and one alpha, but the adapters have ranks "
                              f"{sorted(ranks)} and scales {sorted(scales)}")
    r, scale = ranks.pop(), scales.pop()
    lcfg = model.cfg.lora
    alpha = scale * r
    alpha = int(round(alpha)) if abs(alpha - round(alpha)) < 1e-9 else alpha
    return tensors, dict(r=r, lora_alpha=alpha, lora_dropout=lcfg.dropout if lcfg is not None else 0.0,
                         target_modules=targets)


def vision_tensors(model: nnx.Module, dtype: Any = None) -> dict[str, np.ndarray]:
    """SigLIP under ``model.vision_tower.vision_tower.vision_model.``; an unused post-LayerNorm
    the model does not hold is written as the identity (weight 1, bias 0) so the tower is complete."""

    vc = model.cfg.vision
    out = component_tensors(model, "vision_tower")
    if not vc.use_post_layernorm:
        pdt = out[SIGLIP_PREFIX + "embeddings.position_embedding.weight"].dtype
        out[SIGLIP_PREFIX + "post_layernorm.weight"] = np.ones((vc.hidden_size,), pdt)
        out[SIGLIP_PREFIX + "post_layernorm.bias"] = np.zeros((vc.hidden_size,), pdt)
    return {k: to_numpy(v, dtype) for k, v in out.items()}


# --- CUT3R -----------------------------------------------------------------------------------------
# Cut3rConfig fields the constructor string cannot carry, with the values the reference hard-codes.
_CUT3R_FIXED = dict(norm_eps=1e-6, rope_f0=1.0, local_mem_depth=2, local_mem_mlp_ratio=4.0, final_transform_blocks=2,
                    pose_decoder_mlp_ratio=4)
_CUT3R_ARGS = ("output_mode", "head_type", "depth_mode", "conf_mode", "pose_mode", "freeze", "landscape_only",
               "patch_embed_cls", "ray_enc_depth", "state_size", "local_mem_size", "state_pe", "state_dec_num_heads",
               "depth_head", "rgb_head", "pose_conf_head", "pose_head", "img_size", "patch_size", "enc_embed_dim",
               "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth", "dec_num_heads", "mlp_ratio",
               "norm_im2_in_dec", "pos_embed")


def _lit(v: Any) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(_lit(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v)


def constructor_string(cfg: Any) -> str:
    """``ARCroco3DStereo(ARCroco3DStereoConfig(...))`` for a Cut3rConfig (what the reference
    ``eval``s and our loader parses with :mod:`ast`)."""
    bad = {k: getattr(cfg, k) for k, v in _CUT3R_FIXED.items() if getattr(cfg, k) != v}
    if bad:
        raise CheckpointError(f"CUT3R config fields {bad} differ from the values the reference hard-codes "
                              f"({ {k: _CUT3R_FIXED[k] for k in bad} }); a .pth cannot carry them")
    args = ", ".join(f"{k}={_lit(getattr(cfg, k))}" for k in _CUT3R_ARGS)
    return f"ARCroco3DStereo(ARCroco3DStereoConfig({args}))"


# --- configs ---------------------------------------------------------------------------------------
def _siglip_hf_config(vc: Any) -> dict[str, Any]:
    """The tower's HF SigLIP config; ``num_hidden_layers`` counts the layer LLaVA drops, as the hub
    model's config does."""
    return dict(model_type="siglip_vision_model", hidden_size=vc.hidden_size, intermediate_size=vc.intermediate_size,
                num_hidden_layers=vc.layers + 1, num_attention_heads=vc.num_attention_heads,
                num_channels=vc.num_channels, image_size=vc.image_size, patch_size=vc.patch_size,
                layer_norm_eps=vc.layer_norm_eps, hidden_act=vc.hidden_act)


def vlm3r_config_json(cfg: Any, *, vocab_rows: int, template: dict | None = None, spatial: bool = True,
                      vision_tower: str | None = None) -> dict[str, Any]:
    """The LLaVA-Qwen / VLM-3R ``config.json``: ``template`` (the original file, when known) with
    every field our config determines overwritten; ``spatial=False`` drops the VLM-3R keys (the
    base directory's config)."""
    llm, pc = cfg.llm, cfg.projector
    if pc.pool_stride != 2:
        # the reference pools video frames with get_2dPool's default stride, not mm_spatial_pool_stride
        raise ValueError(f"projector.pool_stride={pc.pool_stride}: the released layout's code pools video frames "
                         "with stride 2 whatever its config says, so this model cannot be exported to it; save it "
                         "in our format (save_pretrained) instead")
    d = dict(template or {})
    eos = list(llm.eos_token_ids)
    d.update({
        "architectures": ["LlavaQwenForCausalLM"],
        "model_type": "llava_qwen",
        "hidden_act": "silu",
        "hidden_size": llm.hidden_size,
        "intermediate_size": llm.intermediate_size,
        "num_hidden_layers": llm.num_layers,
        "num_attention_heads": llm.num_heads,
        "num_key_value_heads": llm.num_kv_heads,
        "max_position_embeddings": llm.max_position_embeddings,
        "max_window_layers": d.get("max_window_layers", llm.num_layers),
        "rms_norm_eps": llm.rms_norm_eps,
        "rope_theta": llm.rope_theta,
        "tie_word_embeddings": llm.tie_word_embeddings,
        "use_sliding_window": False,
        "vocab_size": vocab_rows,
        "mm_hidden_size": pc.mm_hidden_size,
        "mm_projector_type": pc.projector_type,
        "mm_spatial_pool_mode": pc.pool_mode,
        "mm_spatial_pool_stride": pc.pool_stride,
        "mm_patch_merge_type": pc.patch_merge_type,
        "mm_newline_position": pc.newline_position,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "tokenizer_model_max_length": cfg.model_max_length,
        "vision_config": _siglip_hf_config(cfg.vision),
    })
    if llm.head_dim != llm.hidden_size // llm.num_heads:
        d["head_dim"] = llm.head_dim
    if eos:
        d.setdefault("eos_token_id", eos[-1] if len(eos) > 1 else eos[0])
    d["mm_vision_tower"] = vision_tower or d.get("mm_vision_tower") or DEFAULT_VISION_TOWER
    d.setdefault("tokenizer_padding_side", "right")
    d.setdefault("image_aspect_ratio", "anyres_max_9")
    d.setdefault("use_mm_proj", True)
    d.setdefault("torch_dtype", str(np.dtype(llm.param_dtype)))
    for k in _SPATIAL_KEYS:
        d.pop(k, None)
    if spatial and cfg.geometry is not None:
        d.update({
            "spatial_tower": "cut3r",
            "mm_spatial_tower": "cut3r",
            "spatial_feature_dim": cfg.fusion.d_spatial,
            "spatial_tower_select_feature": cfg.spatial_select,
            "fusion_block": cfg.fusion.fusion_block,
            "tune_fusion_block": True,
            "tune_spatial_tower": False,
        })
        if reference_heads(cfg.fusion.fusion_block) and cfg.fusion.num_heads != reference_heads(cfg.fusion.fusion_block):
            d["fusion_num_heads"] = cfg.fusion.num_heads
        if tuple(cfg.geometry_image_size) != REFERENCE_GEOMETRY_SIZE:
            d["spatial_tower_image_size"] = list(cfg.geometry_image_size)
    return d


def reference_incompatibilities(cfg: Any) -> list[str]:
    """Settings the official code cannot reproduce (it hard-codes them); exported anyway, under
    keys only vlm3r_jax reads."""
    out = []
    if cfg.geometry is not None:
        heads = reference_heads(cfg.fusion.fusion_block)
        if heads and cfg.fusion.num_heads != heads:
            out.append(f"fusion num_heads={cfg.fusion.num_heads} (reference: {heads})")
        if tuple(cfg.geometry_image_size) != REFERENCE_GEOMETRY_SIZE:
            out.append(f"geometry_image_size={tuple(cfg.geometry_image_size)} (reference: 432x432)")
    if cfg.vision.num_patches_per_side != 27:
        out.append(f"SigLIP grid {cfg.vision.num_patches_per_side}x{cfg.vision.num_patches_per_side} "
                   "(the reference tower asserts 27x27)")
    return out


def peft_config(facts: dict[str, Any], base_name: str) -> dict[str, Any]:
    return {
        "auto_mapping": None, "base_model_name_or_path": base_name, "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "layers_pattern": None, "layers_to_transform": None,
        "lora_alpha": facts["lora_alpha"], "lora_dropout": facts["lora_dropout"], "modules_to_save": None,
        "peft_type": "LORA", "r": facts["r"], "revision": None, "target_modules": facts["target_modules"],
        "task_type": "CAUSAL_LM",
    }


