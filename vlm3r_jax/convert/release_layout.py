"""The released VLM-3R layout, as names: which of our tensors go under which reference key
(``*_tensors``: numpy arrays in torch layouts), the file and directory names, and the config
files (``config.json``, the PEFT ``adapter_config.json``). The writers that put them on disk are
in :mod:`vlm3r_jax.convert.vlm3r_export`; the reader is :mod:`vlm3r_jax.convert.vlm3r_release`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flax import nnx

from vlm3r_jax.convert.assign import flat_arrays
from vlm3r_jax.convert.cut3r_ckpt import export_state_dict
from vlm3r_jax.convert.errors import CheckpointError
from vlm3r_jax.convert.fusion_ckpt import export_fusion
from vlm3r_jax.convert.hf_qwen2 import hf_name_map, to_hf_tensors
from vlm3r_jax.convert.hf_siglip import export_siglip_hf
from vlm3r_jax.convert.llava_projector import projector_mapping
from vlm3r_jax.models.fusion import reference_heads
from vlm3r_jax.models.lora import lora_layers

BASE_DIR = "base_llava_video_qwen2"
LORA_DIR = "vlm3r_lora"
CUT3R_FILE = "cut3r_512_dpt_4_64.pth"  # the name the reference hard-codes (CUT3R/src/<this>)
PEFT_PREFIX = "base_model.model."
NON_LORA_PREFIX = "base_model.model."  # + "model.mm_projector..." / "model.fusion_block..."
SIGLIP_PREFIX = "model.vision_tower.vision_tower.vision_model."
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


# --- tensors -------------------------------------------------------------------------------------
def to_numpy(x: Any, dtype: Any) -> np.ndarray:
    a = np.asarray(x)
    return np.ascontiguousarray(a.astype(dtype) if dtype is not None and a.dtype != np.dtype(dtype) else a)


def _lora_modules(llm: nnx.Module) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """{per-layer Linear path under the LLM ("layers.0.attn.q"): (kernel [in, out], A [in, r],
    B [r, out], scale)} for Linears with an adapter (layer stacks give one entry per layer)."""

    out = {}
    for path, lin, i in lora_layers(llm):
        k, a, b = (np.asarray(x[...]) for x in (lin.kernel, lin.lora.lora_a, lin.lora.lora_b))
        out[path] = (k, a, b, float(lin.lora.scale)) if i is None else (k[i], a[i], b[i], float(lin.lora.scale))
    return out


def llm_tensors(model: nnx.Module, *, merge: bool, dtype: Any = None) -> dict[str, np.ndarray]:
    """The Qwen2 weights with HF names. ``merge``: attached LoRA adapters are folded into their
    kernels (float32 arithmetic, like PEFT's ``merge_and_unload``); otherwise the base kernels."""

    llm = model.llm
    out = to_hf_tensors(nnx.state(llm, nnx.Param), llm.cfg)
    if merge:
        names = hf_name_map(llm.cfg)
        for path, (k, a, b, scale) in _lora_modules(llm).items():
            key, _ = names[path + ".kernel"]
            merged = k.astype(np.float32) + scale * (a.astype(np.float32) @ b.astype(np.float32))
            out[key] = np.ascontiguousarray(merged.astype(k.dtype).T)
    return {k: to_numpy(v, dtype) for k, v in out.items()}


def lora_tensors(model: nnx.Module, dtype: Any = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """PEFT adapter state dict (``base_model.model.<HF module>.lora_A.weight`` [r, in], ``lora_B``
    [out, r]) and the facts for adapter_config.json (r, alpha, dropout, target_modules)."""

    mods = _lora_modules(model.llm)
    if not mods:
        return {}, {}
    names = hf_name_map(model.llm.cfg)
    tensors: dict[str, np.ndarray] = {}
    targets, ranks, scales = [], set(), set()
    for path, (_, a, b, scale) in mods.items():
        module = names[path + ".kernel"][0][: -len(".weight")]
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = to_numpy(a.T, dtype)
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = to_numpy(b.T, dtype)
        targets.append(module)
        ranks.add(a.shape[1])
        scales.add(scale)
    if len(ranks) != 1 or len(scales) != 1:
        raise CheckpointError(f"PEFT's adapter_config.json holds one r and one alpha, but the adapters have ranks "
                              f"{sorted(ranks)} and scales {sorted(scales)}")
    r, scale = ranks.pop(), scales.pop()
    lcfg = model.cfg.lora
    alpha = scale * r
    alpha = int(round(alpha)) if abs(alpha - round(alpha)) < 1e-9 else alpha
    return tensors, dict(r=r, lora_alpha=alpha, lora_dropout=lcfg.dropout if lcfg is not None else 0.0,
                         target_modules=sorted(targets))


def vision_tensors(model: nnx.Module, dtype: Any = None) -> dict[str, np.ndarray]:
    """SigLIP under ``model.vision_tower.vision_tower.vision_model.``; an unused post-LayerNorm
    the model does not hold is written as the identity (weight 1, bias 0) so the tower is complete."""

    vc = model.cfg.vision
    out = export_siglip_hf(nnx.state(model.vision_tower, nnx.Param), vc, prefix=SIGLIP_PREFIX)
    if not vc.use_post_layernorm:
        pdt = out[SIGLIP_PREFIX + "embeddings.position_embedding.weight"].dtype
        out[SIGLIP_PREFIX + "post_layernorm.weight"] = np.ones((vc.hidden_size,), pdt)
        out[SIGLIP_PREFIX + "post_layernorm.bias"] = np.zeros((vc.hidden_size,), pdt)
    return {k: to_numpy(v, dtype) for k, v in out.items()}


def projector_tensors(model: nnx.Module, dtype: Any = None) -> dict[str, np.ndarray]:
    """``model.mm_projector.*`` (torch [out, in] weights) and ``model.image_newline``."""

    flat = flat_arrays(nnx.state(model.mm_projector, nnx.Param))
    out = {}
    for ours, src in projector_mapping(model.cfg.projector).items():
        arr = flat[ours]
        out[src.keys] = to_numpy(arr.T if ours.endswith(".kernel") else arr, dtype)
    return out


def fusion_tensors(model: nnx.Module, prefix: str = "model.fusion_block.", dtype: Any = None) -> dict[str, np.ndarray]:
    """The fusion block under the reference's names (inverse of ``fusion_mapping``: the split
    q/k/v in-projections are packed back into ``in_proj_weight`` [3d, d] / ``in_proj_bias``)."""

    if model.fusion_block is None:
        return {}
    return {prefix + k: to_numpy(v, dtype) for k, v in export_fusion(model.fusion_block).items()}


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


def cut3r_tensors(model: nnx.Module, dtype: Any = None) -> dict[str, np.ndarray]:
    return {k: to_numpy(v, dtype) for k, v in export_state_dict(nnx.state(model.spatial_tower, nnx.Param)).items()}


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


