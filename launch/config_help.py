"""A config's fields for ``--help``: every leaf with its default and a one-line meaning.

The meanings are the configs' own comments (the trailing ``# ...`` of the line that sets a field, or
the comment just above it), read from the config file and the ``configs/`` modules it imports, so a
field is documented once, where it is defined.
"""

from __future__ import annotations

import os
import re
from typing import Any

_ALIAS = re.compile(r"^(\w+)\s*=\s*(\w+)\.(\w+)\s*=")  # d = c.data = ConfigDict()
_SET = re.compile(r"^(?:\w+\s*=\s*)?(\w+)\.([\w.]+)\s*=(?!=)\s*(.*)$")  # c.data.x = 1  # meaning
_IMPORT = re.compile(r"^from configs(?:\.(\w+))? import ([\w, ]+)")
_SECTION = re.compile(r"^(\w+)\.(\w+)\s*=\s*(?:\w+\.)?(\w+_config)\(")  # c.model = model_config()
_DEF = re.compile(r"^def (\w+)\(")
_NEW = re.compile(r"^(\w+)\s*=\s*ml_collections\.ConfigDict\(")

# Meanings of the standard fields that configs set in bulk (``ConfigDict(dict(hidden_size=...))``),
# by their last name (or last two), one "name: meaning" per line; a comment in the config wins.
_GLOSSARY_TEXT = """
hidden_size: width of the hidden states
intermediate_size: width of the MLP's hidden layer
num_layers: decoder layers
num_hidden_layers: transformer layers
num_heads: attention heads
num_attention_heads: attention heads
num_kv_heads: key/value heads (grouped-query attention)
rope_theta: RoPE base frequency
rms_norm_eps: RMSNorm epsilon
tie_word_embeddings: output projection shares the embedding matrix
max_position_embeddings: longest sequence the positions cover
vocab_size: tokenizer vocabulary size
attention_impl: attention kernel: auto | xla | splash | cudnn | cpu | reference (vlm3r_jax/layers/attention.py)
image_size: input image side in pixels
patch_size: patch side in pixels
use_post_layernorm: apply the final LayerNorm (VLM-3R drops it)
use_head: SigLIP's pooling head
num_layers_used: vision layers run (the last is dropped, as LLaVA's select_layer -2)
enc_embed_dim: CUT3R encoder width
enc_depth: CUT3R encoder blocks
enc_num_heads: encoder heads
dec_embed_dim: CUT3R decoder width
dec_depth: CUT3R decoder blocks
dec_num_heads: decoder heads
state_size: CUT3R state tokens
state_dec_num_heads: state decoder heads
local_mem_size: pose memory slots
ray_enc_depth: ray-map encoder blocks
dpt_feature_dim: DPT head feature width
dpt_last_dim: DPT head last width
dpt_layer_dims: DPT head per-level widths
rope_fp16_rounding: round RoPE2D as the fp16 reference
geometry_image_size: CUT3R input (height, width)
projector_type: mm projector (mlp2x_gelu)
pool_mode: 2x2 pooling of the video tokens
pool_stride: pooling stride
patch_merge_type: LLaVA patch merge (spatial_unpad)
newline_position: where newline tokens go
fusion_block: fusion variant (docs/fusion_variants.md)
dropout: dropout rate while training
spatial_select: which CUT3R tokens fuse: all | all_tokens | camera_tokens | patch_tokens
model_max_length: longest prompt + answer in tokens
release_lora: init=release: the VLM-3R LoRA dir
release_base: init=release: the LLaVA-Video-Qwen2 base dir
release_geometry: init=release: the CUT3R .pth
seed: random seed
initializer_modules: modules redrawn when initializer_range > 0
lora.enabled: attach LoRA adapters to the LLM
rank: LoRA rank
alpha: LoRA scale numerator (alpha / rank)
targets: Linear layers that get adapters (regexes)
shape.data: data-parallel mesh axis size (-1 = the remaining devices)
shape.fsdp: parameter-sharding axis size
shape.tensor: tensor-parallel axis size
rules: logical axis name -> mesh axes (vlm3r_jax/sharding.py)
param_dtype: dtype of the stored parameters
compute_dtype: dtype of activations and matmuls
dtype: compute dtype
lr: peak learning rate (warmup, then cosine decay)
warmup_ratio: fraction of the steps spent warming up
weight_decay: AdamW weight decay
b1: Adam beta1
b2: Adam beta2
eps: Adam epsilon
max_grad_norm: gradient clipping norm
steps: optimizer steps
batch_size: global batch in rows
grad_accum_steps: micro-batches per step
trainable: parameter paths that train (regexes; the rest is frozen)
train_lora: train the LoRA adapters
save_every: checkpoint every N steps
keep: checkpoints kept
log_every: log metrics every N steps
eval_every: evaluate every N steps (0 = never)
tensorboard: write TensorBoard events when available
async_checkpoint: write checkpoints in the background
num_frames: frames sampled per video
siglip_size: SigLIP input side in pixels
source_kind: record format: llava | vsibench | vstibench
worker_count: Grain worker processes (0 = in-process)
add_time_instruction: prepend the video-length line
width: frame width in pixels
height: frame height in pixels
fps: frames per second of the videos
hfov_deg: horizontal field of view in degrees
num_workers: processes rendering scenes
contact_sheet_scenes: scenes drawn on the preview sheet
dataset: dataset name in the paths and records
benchmark: vsibench | vstibench
include_paper_row: add the paper's row to the table
max_new_tokens: answer length limit in tokens
progress: show a progress bar
mc_post_prompt: text after a multiple-choice question
na_post_prompt: text after a numeric question
builder: model-builder hook (docs/launch.md)
img_size: CUT3R input (height, width)
pos_embed: CUT3R position embedding (RoPE2D frequency)
pose_head: CUT3R pose head on
rgb_head: CUT3R colour head on
state_pe: state position encoding
"""
GLOSSARY = dict(line.split(": ", 1) for line in _GLOSSARY_TEXT.strip().splitlines())


def _sources(path: str) -> list[str]:
    """``path`` and the ``configs/*.py`` files it imports (depth-first, each once)."""
    seen: list[str] = []

    def visit(p: str) -> None:
        if p in seen or not os.path.isfile(p):
            return
        seen.append(p)
        with open(p, encoding="utf-8") as f:
            for line in f:
                m = _IMPORT.match(line.strip())
                if m:
                    names = [m[1]] if m[1] else [n.strip() for n in m[2].split(",")]
                    for n in names:
                        visit(os.path.join(os.path.dirname(p), f"{n}.py"))

    visit(path)
    return seen


def field_docs(path: str) -> dict[str, str]:
    """dotted field -> meaning, from the comments of ``path`` and the configs it imports. A helper
    such as ``model_config()`` documents the section it fills (``c.model = model_config()``)."""
    sources = _sources(path)
    texts = {src: open(src, encoding="utf-8").read().splitlines() for src in sources}
    section = {m[3]: m[2] for lines in texts.values() for raw in lines if (m := _SECTION.match(raw.strip()))}
    docs: dict[str, str] = {}
    for src in sources:
        alias = {"c": ""}
        above: list[str] = []
        for raw in texts[src]:
            s = raw.strip()
            if s.startswith("#"):
                above.append(s.lstrip("#").strip())
                continue
            if m := _DEF.match(raw):
                alias = {"c": section.get(m[1], "")}
            elif m := _NEW.match(s):
                alias[m[1]] = alias["c"]
            if m := _ALIAS.match(s):
                alias[m[1]] = ".".join(x for x in (alias.get(m[2], ""), m[3]) if x)
            m = _SET.match(s)
            if m and m[1] in alias:
                key = ".".join(x for x in (alias[m[1]], m[2]) if x)
                trailing = m[3].split("  # ", 1)[1].strip() if "  # " in m[3] else ""
                doc = trailing or " ".join(above)
                if doc and key not in docs:
                    docs[key] = doc
            above = []
    return docs


def meaning(key: str, docs: dict[str, str]) -> str:
    """The config's own comment for ``key`` or its nearest documented parent, else the glossary's
    entry for its last name."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in docs:
            return docs[".".join(parts[:i])]
    return GLOSSARY.get(parts[-1], GLOSSARY.get(".".join(parts[-2:]), ""))


def leaves(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``[(dotted field, value)]`` of every leaf of a ConfigDict, in definition order."""
    out = []
    for k, v in config.items():
        key = f"{prefix}{k}"
        if hasattr(v, "items") and not isinstance(v, dict):
            out += leaves(v, key + ".")
        else:
            out.append((key, v))
    return out


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def describe(config: Any, path: str, flag: str = "config") -> str:
    """The ``--help`` block: ``--flag.field=default  meaning`` per leaf, meanings of undocumented
    leaves taken from their nearest documented parent."""
    docs = field_docs(path)
    shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    lines = [f"Fields of {shown} (override with --{flag}.FIELD=VALUE):"]
    for key, value in leaves(config):
        doc = meaning(key, docs)
        lines.append(f"  --{flag}.{key}={_short(repr(value), 40)}" + (f"\n      {_short(doc, 110)}" if doc else ""))
    return "\n".join(lines)
