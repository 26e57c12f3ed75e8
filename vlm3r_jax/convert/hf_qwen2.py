"""Hugging Face Qwen2 checkpoints <-> :class:`vlm3r_jax.models.qwen2.Qwen2` parameters.

Name map (HF ``Qwen2ForCausalLM`` state dict -> our parameter path; kernels are transposed
from PyTorch's ``[out, in]`` to our ``[in, out]``)::

    model.embed_tokens.weight                      -> embed.embedding
    model.layers.{i}.input_layernorm.weight        -> layers.{i}.input_norm.scale
    model.layers.{i}.post_attention_layernorm.weight -> layers.{i}.post_norm.scale
    model.layers.{i}.self_attn.{q,k,v}_proj.weight -> layers.{i}.attn.{q,k,v}.kernel   (T)
    model.layers.{i}.self_attn.{q,k,v}_proj.bias   -> layers.{i}.attn.{q,k,v}.bias
    model.layers.{i}.self_attn.o_proj.weight       -> layers.{i}.attn.o.kernel         (T)
    model.layers.{i}.mlp.{gate,up,down}_proj.weight -> layers.{i}.mlp.{gate,up,down}.kernel (T)
    model.norm.weight                              -> norm.scale
    lm_head.weight                                 -> lm_head.kernel (T; untied heads only)

Loading streams one tensor at a time from memory-mapped safetensors into the target dtype and
sharding (:func:`vlm3r_jax.convert.assign.load_state`), so a 7B bf16 checkpoint is never held
twice in host memory.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlm3r_jax import sharding
from vlm3r_jax.convert.assign import Layout, Rows, Src, export_tensors, identity, load_state, transpose
from vlm3r_jax.convert.json_config import read_json_object
from vlm3r_jax.convert.safetensors_io import SafetensorsDir, save_safetensors
from vlm3r_jax.convert.sources import PrefixSource, TensorSource
from vlm3r_jax.models.qwen2 import Qwen2, Qwen2Config

# Non-LLM tensors of a LLaVA-Qwen / VLM-3R base directory (load its Qwen2 with ignore=this).
LLAVA_QWEN_IGNORE: tuple[str, ...] = (
    r"model\.vision_tower\..*",
    r"model\.vision_resampler\..*",
    r"model\.mm_projector\..*",
    r"model\.image_newline",
    r"model\.spatial_tower\..*",
    r"model\.fusion_block\..*",
)

# (our suffix, HF suffix, layout) per decoder layer
_LAYER_MAP: tuple[tuple[str, str, Layout], ...] = (
    ("input_norm.scale", "input_layernorm.weight", identity),
    ("post_norm.scale", "post_attention_layernorm.weight", identity),
    ("attn.q.kernel", "self_attn.q_proj.weight", transpose),
    ("attn.q.bias", "self_attn.q_proj.bias", identity),
    ("attn.k.kernel", "self_attn.k_proj.weight", transpose),
    ("attn.k.bias", "self_attn.k_proj.bias", identity),
    ("attn.v.kernel", "self_attn.v_proj.weight", transpose),
    ("attn.v.bias", "self_attn.v_proj.bias", identity),
    ("attn.o.kernel", "self_attn.o_proj.weight", transpose),
    ("mlp.gate.kernel", "mlp.gate_proj.weight", transpose),
    ("mlp.up.kernel", "mlp.up_proj.weight", transpose),
    ("mlp.down.kernel", "mlp.down_proj.weight", transpose),
)


def hf_mapping(cfg: Qwen2Config, prefix: str = "", truncate_vocab: bool = False) -> dict[str, Src]:
    """``{our param path: Src(HF key under prefix, layout)}`` for every parameter of ``Qwen2(cfg)``:
    what :func:`load_state` reads and :func:`to_hf_tensors` writes.

    ``truncate_vocab`` keeps only the first ``cfg.vocab_size`` rows of the embedding and LM head
    (HF ``resize_token_embeddings`` shrinking the vocab); an export through this map can append
    the cut rows from the original checkpoint (``export_tensors(..., fill=)``)."""

    def vocab(op: Layout) -> Layout:
        # rows are the vocab in the torch layout [vocab, D], before the transpose
        return Rows(cfg.vocab_size, op) if truncate_vocab else op

    out = {"embed.embedding": Src(prefix + "model.embed_tokens.weight", vocab(identity)),
           "norm.scale": Src(prefix + "model.norm.weight")}
    for i in range(cfg.num_layers):
        for ours, theirs, op in _LAYER_MAP:
            out[f"layers.{i}.{ours}"] = Src(f"{prefix}model.layers.{i}.{theirs}", op)
    if not cfg.tie_word_embeddings:
        out["lm_head.kernel"] = Src(prefix + "lm_head.weight", vocab(transpose))
    return out


def read_hf_config(hf_dir: str) -> dict[str, Any]:
    """Parses ``hf_dir/config.json`` with errors that name the path."""
    if not os.path.isdir(hf_dir):
        raise FileNotFoundError(f"Qwen2 checkpoint directory does not exist: {hf_dir}")
    path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no config.json in {hf_dir}; a Hugging Face Qwen2 directory holds config.json and *.safetensors"
        )
    return read_json_object(path)


def config_from_dir(hf_dir: str, **overrides: Any) -> Qwen2Config:
    """:class:`Qwen2Config` from ``hf_dir/config.json``. The eos ids (where generation stops; the
    first one pads) come from generation_config.json when the dir has one, as transformers'
    ``generate`` takes them, else from config.json."""
    hf = read_hf_config(hf_dir)
    gen_path = os.path.join(hf_dir, "generation_config.json")
    if "eos_token_ids" not in overrides and os.path.exists(gen_path):
        gen_eos = read_json_object(gen_path).get("eos_token_id")
        ids = [] if gen_eos is None else (gen_eos if isinstance(gen_eos, list) else [gen_eos])
        overrides["eos_token_ids"] = tuple(int(i) for i in ids)
    return Qwen2Config.from_hf_config(hf, source=os.path.join(hf_dir, "config.json"), **overrides)


def abstract_state(cfg: Qwen2Config) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, abstract state) of ``Qwen2(cfg)`` without allocating parameters."""
    model = nnx.eval_shape(lambda: Qwen2(cfg, rngs=nnx.Rngs(0)))
    return nnx.split(model)


def load_qwen2_state(
    source: TensorSource | str,
    cfg: Qwen2Config,
    *,
    prefix: str = "",
    ignore: tuple[str, ...] | list[str] = (),
    shardings: Any = None,
    state: Any = None,
    truncate_vocab: bool = False,
) -> nnx.State:
    """Loads Qwen2 weights from ``source`` (a TensorSource or an HF directory/file path).

    ``prefix`` selects a Qwen2 inside a bigger checkpoint: its keys are ``prefix + HF name``; keys
    outside the prefix are not considered at all. ``ignore`` holds regexes (matched against the
    key after the prefix is removed) of extra tensors that may be present, e.g. the vision tower
    of a LLaVA-Qwen base dir: ``ignore=[r"model\\.vision_tower\\..*", r"model\\.mm_projector\\..*",
    r"model\\.image_newline"]``. ``shardings`` (from :func:`vlm3r_jax.sharding.state_shardings`)
    places each tensor as it is read. Weights are cast to ``cfg.param_dtype``.
    ``truncate_vocab`` keeps only the first ``cfg.vocab_size`` rows of the embedding and LM head
    when the checkpoint has more (what HF ``resize_token_embeddings(len(tokenizer))`` does when
    shrinking; LLaVA-Qwen checkpoints are used that way).
    Raises :class:`CheckpointError` (a ValueError) naming missing / mis-shaped / unexpected tensors.
    """
    if isinstance(source, str):
        source = SafetensorsDir(source)
    if prefix:
        source = PrefixSource(source, prefix)
    if state is None:
        _, state = abstract_state(cfg)
    ignore = list(ignore)
    if cfg.tie_word_embeddings:
        # Some tied checkpoints still store a copy of the embedding as lm_head.weight.
        ignore.append(r"lm_head\.weight")
    # Older exports carry non-persistent rotary buffers; they are recomputed here.
    ignore.append(r".*rotary_emb\.inv_freq")
    mapping = hf_mapping(cfg, truncate_vocab=truncate_vocab)
    return load_state(
        state,
        source,
        mapping,
        ignore=ignore,
        dtype=jnp.dtype(cfg.param_dtype),
        shardings=shardings,
        what=f"Qwen2 checkpoint{f' (prefix {prefix!r})' if prefix else ''}",
    )


def load_qwen2(
    hf_dir: str,
    *,
    dtype: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    rules: Any = None,
    prefix: str = "",
    ignore: tuple[str, ...] | list[str] = (),
    truncate_vocab: bool = False,
    **config_overrides: Any,
) -> tuple[Qwen2Config, nnx.GraphDef, nnx.State]:
    """Reads an HF Qwen2 (or LLaVA-Qwen) dir -> (config, graphdef, loaded state).

    ``dtype`` sets both the parameter and compute dtype (default float32). With ``mesh`` the
    params are placed according to their logical axes and ``rules``. ``config_overrides`` replace
    config fields (e.g. ``vocab_size=len(tokenizer)`` together with ``truncate_vocab=True``).
    """
    if dtype is not None:
        config_overrides.setdefault("param_dtype", dtype)
        config_overrides.setdefault("dtype", dtype)
    cfg = config_from_dir(hf_dir, **config_overrides)
    source = SafetensorsDir(hf_dir)
    graphdef, abstract = abstract_state(cfg)
    shardings = None
    if mesh is not None:

        shardings = sharding.state_shardings(abstract, mesh, rules or sharding.DEFAULT_RULES)
    state = load_qwen2_state(
        source, cfg, prefix=prefix, ignore=ignore, shardings=shardings, state=abstract, truncate_vocab=truncate_vocab
    )
    return cfg, graphdef, state


def to_hf_tensors(state: Any, cfg: Qwen2Config, dtype: Any = None) -> dict[str, np.ndarray]:
    """Our (concrete) state -> HF ``Qwen2ForCausalLM`` state dict as numpy (optionally cast)."""
    out = export_tensors(state, hf_mapping(cfg), what="Qwen2 export")
    return {k: v.astype(dtype) if dtype is not None else v for k, v in out.items()}


def save_hf(
    out_dir: str,
    state: Any,
    cfg: Qwen2Config,
    *,
    dtype: Any = None,
    max_shard_bytes: int | None = None,
) -> None:
    """Writes ``config.json`` and ``model.safetensors`` (or ``model-0000i-of-0000n.safetensors``
    plus ``model.safetensors.index.json`` when ``max_shard_bytes`` is set and exceeded) to
    ``out_dir`` in the layout ``transformers.Qwen2ForCausalLM.from_pretrained`` reads."""
    os.makedirs(out_dir, exist_ok=True)
    tensors = to_hf_tensors(state, cfg, dtype)
    hf_cfg = cfg.to_hf_config()
    if dtype is not None:
        hf_cfg["torch_dtype"] = str(np.dtype(dtype))
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_cfg, f, indent=2)
    meta = {"format": "pt"}
    total = sum(a.nbytes for a in tensors.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, metadata=meta)
        return
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_safetensors(os.path.join(out_dir, name), shard, metadata=meta)
        weight_map.update({k: name for k in shard})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
