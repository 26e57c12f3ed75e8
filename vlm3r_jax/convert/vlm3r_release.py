"""Name maps for the released VLM-3R checkpoint layout (non_lora_trainables.bin, PEFT adapters).

Keys of ``non_lora_trainables.bin`` are first normalised as the reference loader does: strip a
leading ``base_model.``; if keys then start with ``model.model.``, strip one more ``model.``.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterable
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipeline.tokenizer import QwenTokenizer
from vlm3r_jax.convert import cut3r_ckpt
from vlm3r_jax.convert.assign import Src, load_state
from vlm3r_jax.convert.errors import CheckpointError
from vlm3r_jax.convert.hf_qwen2 import LLAVA_QWEN_IGNORE
from vlm3r_jax.convert.hf_siglip import load_siglip_state
from vlm3r_jax.convert.hub import CONFIG_FILES, HubError, resolve, resolve_vlm3r
from vlm3r_jax.convert.json_config import read_json_object
from vlm3r_jax.convert.release_layout import (
    FUSION_PREFIX,
    LORA_KEY,
    SIGLIP_PREFIX,
    component_map,
    peft_key,
    with_adapters,
)
from vlm3r_jax.convert.safetensors_io import SafetensorsDir
from vlm3r_jax.convert.sources import DictSource, OverlaySource, TensorSource
from vlm3r_jax.convert.torch_pickle import TorchPickleSource
from vlm3r_jax.models.dtype_policy import DtypeOf, cast_params
from vlm3r_jax.models.fusion import FusionConfig, reference_heads
from vlm3r_jax.models.host_init import fill_abstract_rng
from vlm3r_jax.models.lora import LoRAConfig
from vlm3r_jax.models.projector import ProjectorConfig
from vlm3r_jax.models.qwen2 import Qwen2Config
from vlm3r_jax.models.siglip import SiglipVisionConfig
from vlm3r_jax.models.vlm3r import LLM_LORA_TARGETS, VLM3RConfig, abstract_vlm3r

log = logging.getLogger(__name__)


def strip_non_lora_prefixes(keys: Iterable[str]) -> dict[str, str]:
    """{normalised key: original key}, the reference's two-step prefix stripping."""
    keys = list(keys)
    out = {(k[len("base_model."):] if k.startswith("base_model.") else k): k for k in keys}
    if any(k.startswith("model.model.") for k in out):
        out = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in out.items()}
    return out


# --- the whole released layout ---------------------------------------------------------------
# what a non_lora_trainables.bin key may name (anything else is dropped with a warning)
_NON_LORA_TARGETS = ("model.mm_projector.", "model.image_newline", "model.fusion_block.", SIGLIP_PREFIX,
                     "model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
# Known SigLIP towers by width when no config can be found (heads cannot be read off shapes).
_KNOWN_SIGLIP = {1152: dict(num_attention_heads=16, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")}


def _open_torch_or_safetensors(path: str) -> TensorSource:
    if path.endswith(".safetensors"):
        return SafetensorsDir(path)
    return TorchPickleSource(path)


def find_adapter_weights(lora_dir: str) -> str:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        p = os.path.join(lora_dir, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(
        f"no PEFT adapter in {lora_dir}: expected adapter_model.safetensors or adapter_model.bin "
        "(with adapter_config.json)"
    )


def read_adapter_facts(lora_dir: str) -> dict | None:
    """{r, alpha, scale, dropout, path, source} of the PEFT adapter in ``lora_dir`` (``source``: its
    weights, opened once for the rank check and the load), or None when the
    directory holds neither adapter weights nor adapter_config.json. Weights without a config, or
    a config whose ``r`` disagrees with the tensors, would change the model silently (no LoRA, or
    a wrong scale): both are errors."""
    ac_path = os.path.join(lora_dir, "adapter_config.json")
    has_weights = any(os.path.exists(os.path.join(lora_dir, n))
                      for n in ("adapter_model.safetensors", "adapter_model.bin"))
    if not os.path.exists(ac_path):
        if has_weights:
            raise CheckpointError(f"{lora_dir} has LoRA weights but no adapter_config.json (it holds r and "
                                  "lora_alpha, which set the LoRA scale); copy it from the same training run")
        return None
    ac = read_json_object(ac_path)
    r, alpha = ac.get("r"), ac.get("lora_alpha", ac.get("r"))
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise CheckpointError(f"{ac_path}: r must be a positive integer (the LoRA rank), got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha):
        raise CheckpointError(f"{ac_path}: lora_alpha must be a finite number, got {alpha!r}")
    path = find_adapter_weights(lora_dir)
    src = _open_torch_or_safetensors(path)
    ranks = {src.shape(k)[0] for k in src.keys() if k.endswith(".lora_A.weight") and len(src.shape(k)) == 2}
    if ranks and ranks != {r}:
        raise CheckpointError(f"{ac_path} says r = {r} but the lora_A tensors in {path} have rank(s) "
                              f"{sorted(ranks)}; the scale lora_alpha / r would be wrong. Use the adapter_config.json "
                              "saved with these weights")
    scale = alpha / (r ** 0.5) if ac.get("use_rslora") else alpha / r
    return dict(r=r, alpha=float(alpha), scale=scale, dropout=float(ac.get("lora_dropout", 0.0) or 0.0), path=path,
                source=src)


def resolve_vision_config(cfg_json: dict, base_dir: str, search_dirs: list[str], source: TensorSource,
                          vision_config: str | dict | None = None) -> dict:
    """The SigLIP tower's HF config. The released base names its tower by hub id
    (``mm_vision_tower``) only; we look, in order, at: the ``vision_config`` argument, a
    ``vision_config`` dict inside the model config, that hub id's ``config.json`` (a local dir, the
    Hugging Face cache, or a download: :mod:`vlm3r_jax.convert.hub`), SigLIP configs in directories
    next to the checkpoint, and finally a table of known towers keyed by the width read from the
    weights."""
    if isinstance(vision_config, dict):
        return vision_config
    if isinstance(vision_config, str):
        return read_json_object(os.path.join(vision_config, "config.json") if os.path.isdir(vision_config) else vision_config)
    if isinstance(cfg_json.get("vision_config"), dict):
        return cfg_json["vision_config"]
    width = source.shape(SIGLIP_PREFIX + "embeddings.patch_embedding.weight")[0]
    hub_id = cfg_json.get("mm_vision_tower")
    candidates = []
    if hub_id:
        try:  # the tower's config.json only: a local dir, the Hub cache, or a download
            tower = resolve(hub_id, CONFIG_FILES, what="SigLIP tower (mm_vision_tower)")
            if os.path.isdir(tower):
                candidates.append(os.path.join(tower, "config.json"))
        except HubError as e:
            log.info("%s; looking next to the checkpoint instead", e)
    for d in search_dirs:
        candidates += glob.glob(os.path.join(os.path.dirname(os.path.abspath(d)), "*", "config.json"))
    for c in candidates:
        try:
            d = read_json_object(c)
        except (OSError, CheckpointError):
            continue
        d = d.get("vision_config", d) if isinstance(d.get("vision_config"), dict) else d
        if d.get("model_type") in ("siglip_vision_model", "siglip") and d.get("hidden_size") == width:
            return d
    if width in _KNOWN_SIGLIP:
        patch = source.shape(SIGLIP_PREFIX + "embeddings.patch_embedding.weight")[-1]
        n_pos = source.shape(SIGLIP_PREFIX + "embeddings.position_embedding.weight")[0]
        inter = source.shape(SIGLIP_PREFIX + "encoder.layers.0.mlp.fc1.weight")[0]
        return dict(model_type="siglip_vision_model", hidden_size=width, patch_size=patch,
                    image_size=int(round(n_pos ** 0.5)) * patch, intermediate_size=inter, **_KNOWN_SIGLIP[width])
    raise CheckpointError(
        f"cannot determine the SigLIP config (width {width}) for {base_dir}: mm_vision_tower={hub_id!r} is neither "
        "on the Hub nor in the local Hugging Face cache and no SigLIP config.json was found next to the checkpoint. Pass "
        "vision_config=<dir or config.json of the SigLIP tower>."
    )


def _count_layers(keys, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
    idx = {int(m.group(1)) for k in keys if (m := pat.match(k))}
    return max(idx) + 1 if idx else 0


def build_release_config(lora_dir: str | None, base_dir: str, geometry: str | None, *, dtype: str = "float32",
                         vision_config: str | dict | None = None, keep_lora: bool = False,
                         attention_impl: str = "auto") -> tuple[Any, dict]:
    """VLM3RConfig for a released checkpoint; returns (config, info) where info holds the
    resolved paths, the opened sources (``base``, ``geometry_source``, ``lora["source"]``) and the
    facts the loader needs."""

    lora_dir, base_dir, geometry = resolve_vlm3r(lora_dir, base_dir, geometry)
    if not os.path.isdir(base_dir):
        raise FileNotFoundError(f"base model directory does not exist: {base_dir}")
    cfg_dir = lora_dir or base_dir
    cfg_path = os.path.join(cfg_dir, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"no config.json in {cfg_dir} (the VLM-3R config with spatial_tower/fusion_block)")
    cj = read_json_object(cfg_path)
    base = SafetensorsDir(base_dir)
    tok = QwenTokenizer.from_dir(base_dir)
    vocab = len(tok)
    llm = Qwen2Config.from_hf_config(
        cj, source=cfg_path, vocab_size=int(cj["vocab_size"]), tie_word_embeddings=False,
        param_dtype=dtype, dtype=dtype, attention_impl=attention_impl,
        eos_token_ids=tuple(i for i in (tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>"))
                            if i is not None))
    rows = base.shape("model.embed_tokens.weight")[0]
    if vocab > rows:
        raise CheckpointError(f"tokenizer in {base_dir} has {vocab} tokens but the embedding has {rows} rows")
    llm = llm.replace(vocab_size=vocab)
    vc = resolve_vision_config(cj, base_dir, [base_dir] + ([lora_dir] if lora_dir else []), base, vision_config)
    # the reference builds the hub tower and deletes its last layer; base tensors of a layer past
    # that (a base saved with the full tower) are never used
    n_layers = min(_count_layers(base.keys(), SIGLIP_PREFIX), int(vc.get("num_hidden_layers", 10**6)) - 1)
    vision = SiglipVisionConfig.from_hf(vc, num_layers_used=n_layers, use_post_layernorm=False, use_head=False,
                                        attention_impl="xla")
    # the reference pools video frames with get_2dPool's default stride 2, whatever
    # mm_spatial_pool_stride says (that key only feeds its unused encode_multimodals)
    projector = ProjectorConfig.from_llava_config(cj, num_patches_per_side=vision.num_patches_per_side, pool_stride=2)
    geo_cfg = geo_src = None
    # fusion_num_heads / spatial_tower_image_size: written by our export only when they differ from
    # the constants the reference hard-codes (18 heads, 432x432)
    try:
        block = cj.get("fusion_block", "cross_attention")
        fusion = FusionConfig(fusion_block=block,
                              d_clip=int(cj.get("mm_hidden_size", vision.hidden_size)),
                              d_spatial=int(cj.get("spatial_feature_dim", 768)),
                              num_heads=int(cj.get("fusion_num_heads", reference_heads(block))),
                              d_llm=int(cj["hidden_size"]) if "hidden_size" in cj else None)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{cfg_path}: {e}") from e
    spatial = cj.get("spatial_tower") or cj.get("mm_spatial_tower")
    if spatial:
        if spatial != "cut3r":
            raise CheckpointError(f"{cfg_path}: spatial_tower {spatial!r} is not supported (only 'cut3r')")
        if geometry is None:
            raise FileNotFoundError(f"{cfg_path} uses spatial_tower=cut3r: pass geometry=<path of the CUT3R .pth>")
        kwargs, geo_src = cut3r_ckpt.open_checkpoint(geometry)
        over = {**cut3r_ckpt.infer_dpt_sizes(geo_src), "dtype": dtype, "param_dtype": dtype}
        geo_cfg = (kwargs.replace(**over) if not isinstance(kwargs, dict)
                   else cut3r_ckpt.config_from_reference_kwargs(kwargs, **over))
    lora = None
    lora_info = None
    if lora_dir is not None:
        lora_info = read_adapter_facts(lora_dir)
    if lora_info is not None:
        r = lora_info["r"]
        if keep_lora:
            lora = LoRAConfig(rank=r, alpha=lora_info["scale"] * r, dropout=lora_info["dropout"], targets=LLM_LORA_TARGETS)
    cfg = VLM3RConfig(
        llm=llm, vision=vision, projector=projector, fusion=fusion, geometry=geo_cfg,
        spatial_select=cj.get("spatial_tower_select_feature", "patch_tokens"),  # the reference's default
        geometry_image_size=tuple(int(x) for x in cj.get("spatial_tower_image_size", (432, 432))),
        model_max_length=int(cj.get("tokenizer_model_max_length", 32768)), lora=lora)
    info = dict(base=base, base_dir=base_dir, lora_dir=lora_dir, geometry=geometry, geometry_source=geo_src,
                lora=lora_info, tokenizer_dir=base_dir, config_json=cj)
    return cfg, info


def _adapted_modules(llm_rules: dict[str, Src], lora_src: TensorSource) -> list[str]:
    """Per-layer LLM Linear paths (of ``llm_rules``, the LLM map without adapters) whose PEFT
    adapter ``lora_src`` holds."""
    keys = set(lora_src.keys())
    return [p[: -len(".kernel")] for p, rule in llm_rules.items()
            if p.endswith(".kernel") and peft_key(rule.keys, "A") in keys]


def merge_lora_rules(rules: dict[str, Src], scale: float) -> dict[str, Src]:
    """``rules`` (an LLM map with adapters) with each adapter merged into its kernel on load, as
    PEFT's ``merge_and_unload`` does: ``W + scale * B @ A``, then the kernel's layout. A computed
    value on top of the map's names, for a model without LoRA modules."""
    out = dict(rules)
    for path in [p for p in rules if p.endswith(".lora.lora_a")]:
        mod = path[: -len(".lora.lora_a")]
        kernel, a, b = (out.pop(mod + s) for s in (".kernel", ".lora.lora_a", ".lora.lora_b"))
        out[mod + ".kernel"] = Src((kernel.keys, a.keys, b.keys),
                                   lambda w, a, b, s=scale, op=kernel.fn: op.load(
                                       w.astype(np.float32) + s * (b.astype(np.float32) @ a.astype(np.float32))))
    return out


class _UnionSource:
    """Several TensorSources under name prefixes (``"lora:" + key``) for one load pass."""

    def __init__(self, parts: dict[str, TensorSource]):
        self.parts = parts

    def _split(self, key: str):
        for p, src in self.parts.items():
            if p and key.startswith(p):
                return src, key[len(p):]
        return self.parts[""], key

    def keys(self):
        return [p + k for p, src in self.parts.items() for k in src.keys()]

    def shape(self, key):
        s, k = self._split(key)
        return s.shape(k)

    def get(self, key):
        s, k = self._split(key)
        return s.get(k)

    def where(self, key=None):
        if key is None:
            return " + ".join(src.where() for src in self.parts.values())
        s, k = self._split(key)
        return s.where(k)


def abstract_release_state(cfg: VLM3RConfig, param_dtypes: DtypeOf | None = None) -> tuple[Any, Any]:
    """(graphdef, abstract state) that :func:`load_release` fills: no memory is used, and with
    ``param_dtypes`` each parameter already has the dtype its tensor is streamed into."""
    graphdef, state = nnx.split(abstract_vlm3r(cfg))
    return graphdef, (state if param_dtypes is None else cast_params(state, param_dtypes))


def load_release(lora_dir: str | None, base_dir: str, geometry: str | None = None, *, dtype: str = "float32",
                 vision_config: str | dict | None = None, keep_lora: bool = False, attention_impl: str = "auto",
                 param_dtypes: DtypeOf | None = None):
    """Loads a released VLM-3R (base LLaVA-Video-Qwen2 dir + PEFT LoRA dir with
    ``non_lora_trainables.bin`` + CUT3R ``.pth``) the way the reference ``load_pretrained_model``
    does: base weights, then the trained projector/fusion from ``non_lora_trainables.bin``, then the
    LoRA adapters merged into the LLM (or kept as adapters with ``keep_lora=True``), then the
    embeddings resized to ``len(tokenizer)``; CUT3R from its own checkpoint.

    ``dtype`` is the compute dtype and, without ``param_dtypes``, the storage dtype of every
    parameter; ``param_dtypes(path, var)`` (models/dtype_policy.py) gives each parameter its own
    (frozen weights bfloat16, trainable ones float32), so each tensor streams straight into it.

    Returns ``(config, model, info)``.
    """

    cfg, info = build_release_config(lora_dir, base_dir, geometry, dtype=dtype, vision_config=vision_config,
                                     keep_lora=keep_lora, attention_impl=attention_impl)
    lora_dir = info["lora_dir"]  # resolved (a Hub id is now its snapshot folder)
    base: SafetensorsDir = info["base"]
    # the sources build_release_config opened, read here once more and not kept in the returned info
    lora_src = info["lora"].pop("source") if info["lora"] is not None else None
    geo_src = info.pop("geometry_source")
    graphdef, state = abstract_release_state(cfg, param_dtypes)
    jdt = None if param_dtypes is not None else jnp.dtype(dtype)  # None: each tensor keeps its target's dtype

    # trained projector + fusion block (override the base's projector)
    non_lora: TensorSource = DictSource({})
    if lora_dir is not None:
        nl_path = os.path.join(lora_dir, "non_lora_trainables.bin")
        if os.path.exists(nl_path):
            raw = _open_torch_or_safetensors(nl_path)
            names = strip_non_lora_prefixes(raw.keys())
            non_lora = DictSource({k: raw.get(v) for k, v in names.items()}, name=nl_path)
        elif cfg.geometry is not None:
            raise FileNotFoundError(f"{nl_path} is missing: it holds the trained fusion block and projector")
    # The reference loads non_lora_trainables.bin with strict=False over the base model: every key
    # it holds wins (normally the trained projector and fusion block), keys naming nothing are dropped.
    unused = [k for k in non_lora.keys() if not k.startswith(_NON_LORA_TARGETS)]
    if unused:
        log.warning("%s: %d tensor(s) name no parameter of the model and are ignored, as the reference does "
                    "(strict=False): %s", non_lora.where(), len(unused), unused[:5])
        dropped = set(unused)
        non_lora = DictSource({k: non_lora.get(k) for k in non_lora.keys() if k not in dropped},
                              name=non_lora.where())
    src = OverlaySource(base, non_lora)
    proj = [k for k in src.keys() if k.startswith("model.mm_projector.") or k == "model.image_newline"]
    state["mm_projector"] = load_state(state["mm_projector"], DictSource({k: src.get(k) for k in proj}, name=src.where()),
                                       component_map(cfg, "mm_projector", state["mm_projector"]), dtype=jdt,
                                       what="projector")
    if cfg.geometry is not None:
        # a merged / fully fine-tuned directory keeps the fusion block in its safetensors
        fusion_src = DictSource({k: src.get(k) for k in src.keys() if k.startswith(FUSION_PREFIX)}, name=src.where())
        state["fusion_block"] = load_state(state["fusion_block"], fusion_src,
                                           component_map(cfg, "fusion_block", state["fusion_block"]), dtype=jdt,
                                           what="fusion block (non_lora_trainables.bin)")
        geo_map = component_map(cfg, "spatial_tower", state["spatial_tower"], cut3r_keys=set(geo_src.keys()))
        state["spatial_tower"] = load_state(state["spatial_tower"], geo_src, geo_map,
                                            ignore=cut3r_ckpt.IGNORED_SOURCE_KEYS, dtype=jdt, what="CUT3R checkpoint")
    # the names of the release's vision_tower map, read relative to the prefix (with the unused layers skipped)
    state["vision_tower"] = load_siglip_state(state["vision_tower"], src, cfg.vision, prefix=SIGLIP_PREFIX, dtype=jdt)
    parts: dict[str, TensorSource] = {"": src}
    llm_rules = component_map(cfg, "llm", state["llm"])
    if lora_src is not None:
        parts[LORA_KEY] = lora_src
        llm_rules = with_adapters(llm_rules, _adapted_modules(llm_rules, lora_src))
    if lora_src is not None and not keep_lora:
        llm_rules = merge_lora_rules(llm_rules, info["lora"]["scale"])
    state["llm"] = load_state(
        state["llm"], _UnionSource(parts), llm_rules,
        ignore=[*LLAVA_QWEN_IGNORE, r".*rotary_emb\.inv_freq", re.escape(LORA_KEY) + ".*"], dtype=jdt,
        what="Qwen2 LLM (base + LoRA)")
    if lora_src is not None:
        used = {k for k in lora_src.keys() if ".lora_A." in k or ".lora_B." in k}
        mapped = {k[len(LORA_KEY):] for rule in llm_rules.values() for k in rule.key_tuple if k.startswith(LORA_KEY)}
        stray = sorted(used - mapped)
        if stray:
            raise CheckpointError(f"{lora_src.where()}: LoRA tensors for modules the model lacks: {stray[:10]}")

    model = nnx.merge(graphdef, fill_abstract_rng(state))
    return cfg, model, info
