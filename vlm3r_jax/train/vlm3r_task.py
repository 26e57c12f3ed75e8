"""VLM-3R training: build the model from a run config, feed it from the Grain pipeline, train
with :func:`vlm3r_jax.train.loop.train`, export the result in our checkpoint format."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from data_pipeline import geometry_cache
from data_pipeline.pipeline import PipelineConfig, make_iterator
from data_pipeline.sources import make_source
from data_pipeline.tokenizer import QwenTokenizer
from vlm3r_jax import storage
from vlm3r_jax.convert import vlm3r_ours
from vlm3r_jax.convert.hub import VLM3R_FILES, resolve
from vlm3r_jax.convert.vlm3r_release import load_release
from vlm3r_jax.models.cut3r.config import Cut3rConfig
from vlm3r_jax.models.dtype_policy import DtypeOf, DtypePolicy, apply_to_module
from vlm3r_jax.models.fusion import FusionConfig
from vlm3r_jax.models.lora import LoRAConfig
from vlm3r_jax.models.projector import ProjectorConfig
from vlm3r_jax.models.qwen2 import Qwen2Config
from vlm3r_jax.models.siglip import SiglipVisionConfig
from vlm3r_jax.models.vlm3r import DEFAULT_TRAINABLE, LLM_LORA_TARGETS, VLM3R, VLM3RConfig
from vlm3r_jax.train import loop
from vlm3r_jax.train.flops import step_flops_per_row, vlm3r_parts
from vlm3r_jax.train.init import FROM_SCRATCH_MODULES, reinit_normal
from vlm3r_jax.train.step import answer_token_xent, labels_overflow
from vlm3r_jax.train.trainable import trainable_filter


def _fields(section: Any, cls: type, where: str) -> dict:
    d = dict(section) if section is not None else {}
    names = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(d) - names)
    if bad:
        raise ValueError(f"unknown keys {bad} in config.{where}; valid keys: {sorted(names)}")
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}


def vlm3r_config(m: ml_collections.ConfigDict, tokenizer: QwenTokenizer | None, dtype: str = "float32",
                 vocab_size: int | None = None) -> VLM3RConfig:
    """``config.model`` (+ the tokenizer's size and stop ids, or ``vocab_size`` without a tokenizer,
    as the AOT compile has) -> :class:`VLM3RConfig`; ``dtype`` is the compute dtype of every tower."""
    eos = () if tokenizer is None else tuple(i for i in (tokenizer.im_end_id, tokenizer.eos_id) if i is not None)
    llm = Qwen2Config(vocab_size=vocab_size or len(tokenizer), eos_token_ids=tuple(dict.fromkeys(eos)), dtype=dtype,
                      param_dtype="float32", **_fields(m.llm, Qwen2Config, "model.llm"))
    vision = SiglipVisionConfig(**_fields(m.vision, SiglipVisionConfig, "model.vision"))
    projector = ProjectorConfig(mm_hidden_size=vision.hidden_size, hidden_size=llm.hidden_size,
                                num_patches_per_side=vision.num_patches_per_side,
                                **_fields(m.projector, ProjectorConfig, "model.projector"))
    geometry = None
    if m.get("geometry"):
        geometry = Cut3rConfig(**{"dtype": dtype, **_fields(m.geometry, Cut3rConfig, "model.geometry")})
    fusion = FusionConfig(d_clip=vision.hidden_size, d_spatial=geometry.dec_embed_dim if geometry else 768,
                          **_fields(m.fusion, FusionConfig, "model.fusion"))
    lora = None
    if m.lora.get("enabled", False):
        lora = LoRAConfig(rank=m.lora.rank, alpha=m.lora.alpha, dropout=m.lora.dropout, targets=LLM_LORA_TARGETS)
    return VLM3RConfig(llm=llm, vision=vision, projector=projector, fusion=fusion, geometry=geometry,
                       geometry_image_size=tuple(m.geometry_image_size), spatial_select=m.spatial_select,
                       model_max_length=m.model_max_length, lora=lora)


def with_remat(vcfg: VLM3RConfig, model: VLM3R, m: ml_collections.ConfigDict) -> VLM3RConfig:
    """A loaded checkpoint carries its architecture, not how to train it: the run config's
    ``model.llm.remat`` / ``model.vision.remat`` (per-layer rematerialization) go onto the model."""
    llm = vcfg.llm.replace(remat=m.llm.get("remat", vcfg.llm.remat))
    vision = dataclasses.replace(vcfg.vision, remat=m.vision.get("remat", vcfg.vision.remat))
    model.llm.cfg, model.vision_tower.cfg = llm, vision
    return dataclasses.replace(vcfg, llm=llm, vision=vision)


def _trainable(cfg: ml_collections.ConfigDict) -> Any:
    """The nnx filter of what trains: ``cfg.train.trainable`` plus, with ``train_lora``, the adapters."""
    tc = cfg.get("train") or {}
    return trainable_filter(list(tc.get("trainable", DEFAULT_TRAINABLE)), include_lora=tc.get("train_lora", True))


def param_dtypes(cfg: ml_collections.ConfigDict) -> DtypeOf:
    """The run's dtype policy (``cfg.dtypes``) per parameter: what ``cfg.train.trainable`` and the
    LoRA adapters select is stored in ``param_dtype``, everything else in ``frozen_dtype``."""
    return DtypePolicy.from_config(cfg.get("dtypes")).dtype_of(_trainable(cfg))


def build_model(cfg: ml_collections.ConfigDict) -> tuple[VLM3RConfig, VLM3R, QwenTokenizer]:
    """A fresh model (``model.init=random``), our checkpoint dir, or a released checkpoint; every
    path stores and computes as ``cfg.dtypes`` says (models/dtype_policy.py)."""
    m = cfg.model
    init = m.init
    compute = DtypePolicy.from_config(cfg.get("dtypes")).compute
    if init == "release":

        vcfg, model, info = load_release(m.release_lora or None, m.release_base, m.release_geometry or None,
                                         keep_lora=bool(m.lora.get("enabled", False)), dtype=compute,
                                         param_dtypes=param_dtypes(cfg))
        return with_remat(vcfg, model, m), model, QwenTokenizer.from_dir(info["tokenizer_dir"])
    if init != "random":
        init = resolve(init, VLM3R_FILES, what="model.init")
        vcfg, model = vlm3r_ours.load_ours(init, param_dtypes=param_dtypes(cfg))
        return with_remat(vcfg, model, m), model, QwenTokenizer.from_dir(init)
    tok_dir = cfg.data.tokenizer_dir
    if not tok_dir:
        raise ValueError("model.init=random needs config.data.tokenizer_dir (a dir with tokenizer.json)")
    tok = QwenTokenizer.from_dir(tok_dir)
    vcfg = vlm3r_config(m, tok, dtype=compute)
    model = VLM3R(vcfg, rngs=nnx.Rngs(params=m.seed, dropout=m.seed + 1))
    std = float(m.get("initializer_range", 0.0))
    if std > 0:  # from scratch: one weight scale for text embeddings and video tokens (train/init.py)

        reinit_normal(model, std, tuple(m.get("initializer_modules", FROM_SCRATCH_MODULES)), seed=m.seed)
    return vcfg, apply_to_module(model, param_dtypes(cfg)), tok


def geometry_key(cfg: ml_collections.ConfigDict, model: VLM3R) -> str:
    """The cache key a geometry cache must carry to stand in for this model's CUT3R on this data
    config (``config.data.geometry_cache``; data_pipeline/geometry_cache.py). Checks the cache's
    manifest, so a cache built for other weights fails here, before any worker starts."""
    d = cfg.data
    key = geometry_cache.key_for_model(model, d.num_frames, d.siglip_size, d.get("frames_dir_fps", 2.0))
    geometry_cache.check_manifest(d.geometry_cache, key)
    return key


def pipeline_config(cfg: ml_collections.ConfigDict, vcfg: VLM3RConfig, mode: str = "train",
                    geometry_key: str = "") -> PipelineConfig:
    d = cfg.data
    cache = d.get("geometry_cache", "") or ""
    return PipelineConfig(
        num_frames=d.num_frames, siglip_size=d.siglip_size, geometry_size=None, mode=mode,
        batch_size=cfg.train.batch_size, length_buckets=tuple(d.length_buckets), seed=cfg.train.seed,
        num_epochs=None if mode == "train" else 1, drop_remainder=mode == "train", worker_count=d.worker_count,
        add_time_instruction=d.add_time_instruction and mode == "train", label_policy=d.label_policy,
        max_length=vcfg.model_max_length, video_tokens_per_frame=vcfg.projector.tokens_per_frame(),
        video_cache_size=d.get("video_cache_size", 0), geometry_cache=cache,
        geometry_key=geometry_key if cache else "", geometry_select=vcfg.spatial_select,
        video_root=d.root if cache else "")


def train_iterator(cfg: ml_collections.ConfigDict, vcfg: VLM3RConfig, tok: QwenTokenizer, geometry_key: str = ""):
    d = cfg.data
    if not d.root or not storage.isdir(d.root):
        raise FileNotFoundError(f"config.data.root={d.root!r} is not a directory (make one with data_pipeline.make_dataset)")
    files = [f if os.path.isabs(f) or storage.is_uri(f) else storage.join(d.root, f) for f in d.train_files]
    source = make_source(d.source_kind, files, video_root=d.root)
    return make_iterator(source, tok, pipeline_config(cfg, vcfg, "train", geometry_key))


def vlm3r_loss(model: VLM3R, batch: dict, max_labels: int = 0) -> tuple[jax.Array, jax.Array]:
    """Train-step loss: next-token cross-entropy on answer tokens (labels != -100). The LM head
    runs only at the (at most ``max_labels`` per row, 0 = every) labelled positions, so the step
    never builds [B, L, vocab] logits (``train.max_label_tokens``)."""
    hidden, sp = model.hidden_states(batch["input_ids"], batch.get("frames"), attention_mask=batch.get("attention_mask"),
                                     labels=batch["labels"], geometry_tokens=batch.get("geometry_tokens"))
    return answer_token_xent(hidden, sp["labels"], model.llm.head, max_labels)


def step_flops(cfg: ml_collections.ConfigDict, vcfg: VLM3RConfig, model: VLM3R, seq_len: int,
               geometry_online: bool = True) -> float:
    """Model FLOPs of one train step per row at spliced length ``seq_len`` (train/flops.py: 6N
    trainable, 4N frozen with a gradient through it, 2N forward-only, plus attention)."""
    return step_flops_per_row(vlm3r_parts(vcfg, nnx.state(model), _trainable(cfg), int(cfg.data.num_frames), seq_len,
                                          int(cfg.train.get("max_label_tokens", 0)), geometry_online))


# What a shell reports for a process killed by SIGTERM. A run stopped by SIGTERM (preemption) exits with it
# after its checkpoint, so schedulers and restart loops that re-run failed jobs re-run this one (exit 0
# would mark a half-trained job as done).
PREEMPTED_EXIT_CODE = 143


def run(cfg: ml_collections.ConfigDict, workdir: str, *, progress: bool = True, eval_hook: Any = None):
    """Trains and exports ``workdir/model`` (our format, loadable with ``api.load_vlm3r``).

    Returns ``(result, model_dir)``. After a SIGTERM (``result.preempted``) ``model_dir`` is None:
    the checkpoint holds the run, and a preemption grace period is too short to export a large model."""

    storage.check_writable(workdir, what="workdir")  # before minutes of model and data setup
    vcfg, model, tok = build_model(cfg)
    max_labels = int(cfg.train.get("max_label_tokens", 0))
    flops_at = functools.lru_cache(maxsize=None)(lambda n, online: step_flops(cfg, vcfg, model, n, online))

    def flops_per_step(host: dict) -> float:  # the spliced length: text - placeholder + video
        lead, text = np.shape(host["labels"])[:-1], np.shape(host["labels"])[-1]
        n = text - 1 + vcfg.num_video_tokens(int(cfg.data.num_frames))
        return float(np.prod(lead)) * jax.process_count() * flops_at(n, "geometry_tokens" not in host)

    def check_batch(host: dict) -> None:
        n = labels_overflow(host["labels"], max_labels)
        if n:
            raise ValueError(f"a batch row has {n} answer tokens but config.train.max_label_tokens="
                             f"{max_labels}; raise it to at least {n} (0 = no bound, full logits)")

    if cfg.data.get("geometry_cache"):
        it = train_iterator(cfg, vcfg, tok, geometry_key(cfg, model))
    else:
        it = train_iterator(cfg, vcfg, tok)
    try:
        result = loop.train(cfg, workdir, model, functools.partial(vlm3r_loss, max_labels=max_labels), it,
                            peak_flops=cfg.train.get("peak_flops", None), flops_per_step=flops_per_step,
                            check_batch=check_batch, eval_hook=eval_hook, progress=progress)
    finally:
        it.close()
    if result.preempted:
        return result, None
    trained = nnx.merge(result.graphdef, result.state.params, result.frozen)
    trained.eval()
    out = storage.join(workdir, "model")
    with storage.local_dir(out) as local:  # save_ours writes local files; a URI work dir gets a copy
        vlm3r_ours.save_ours(local, vcfg, trained, tok, num_frames=cfg.data.num_frames)
    return result, out
