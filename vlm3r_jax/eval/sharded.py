"""The model predictor of the benchmark eval: data through the Grain pipeline, batches sharded
over the device mesh.

* :class:`EvalExample` (the predictor's ``prepare``; picklable, so :func:`runner.run_eval` runs
  it in Grain worker processes) turns an eval record into a pipeline example with
  :class:`data_pipeline.pipeline.PrepareExample` in eval mode: PyAV decode of ``num_frames``
  uniformly sampled frames, the SigLIP view, and the qwen_1_5 prompt ``<image>\\n{prompt}`` up to
  the generation prompt. A text-only run tokenizes the prompt without the placeholder instead.
* :class:`ShardedVLM3RPredictor` (the ``predict_fn``) pads each batch of records to a fixed
  number of rows (``batch_size`` rounded up to the mesh's data-parallel size, so one program is
  compiled; the filler rows copy the last real row and are dropped from the answers), pads the
  text to a length bucket (:func:`data_pipeline.pipeline.collate`), splits the rows over the
  ``batch`` rule's mesh axes (``data`` x ``fsdp``), places the parameters by their logical axes
  and decodes greedily in one jitted program (video encoding + splice + KV-cache sampler).

Multi-host: every process builds the same global host batch (it sees the same record stream) and
places only its addressable shards; the answers are all-gathered, so the runner's writer
(process 0) has them all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline.chat_template import question_prompt, tokenize_prompt
from data_pipeline.geometry_cache import check_manifest, key_for_model
from data_pipeline.pipeline import PipelineConfig, PrepareExample, collate
from data_pipeline.tokenizer import QwenTokenizer
from vlm3r_jax import sharding
from vlm3r_jax.infer.sampling import SamplingConfig, generate, stop_ids_array
from vlm3r_jax.models.kv_cache import KVCache
from vlm3r_jax.train import distributed

DEFAULT_LENGTH_BUCKETS = (128, 256, 512, 1024)


class EvalExample:
    """eval record (with ``prompt`` and ``video_path``) -> the record plus ``example`` (a
    pipeline example: ``input_ids`` int [T], ``frames`` float [N, S, S, 3] unless text-only).
    Raises on an unreadable video or an over-long prompt; the runner then fails that sample only."""

    def __init__(self, tokenizer: QwenTokenizer, cfg: PipelineConfig, text_only: bool = False):
        if cfg.mode != "eval":
            raise ValueError(f"EvalExample needs a PipelineConfig in eval mode, got mode={cfg.mode!r}")
        self.cfg, self.text_only = cfg, text_only
        self.tok = tokenizer
        self.prepare = PrepareExample(tokenizer, cfg, epoch_length=1)

    def __call__(self, rec: dict[str, Any]) -> dict[str, Any]:
        meta = {"id": str(rec["id"]), "question_type": str(rec.get("question_type", "")), "answer": ""}
        if self.text_only:
            conv = [{"from": "human", "value": rec["prompt"]}]
            tok = tokenize_prompt(self.tok, conv, self.cfg.template(), require_placeholder=False)
            ex = {"input_ids": tok.input_ids, "labels": tok.labels, "placeholder_index": np.int32(0), **meta}
        else:
            if not rec.get("video_path"):
                raise FileNotFoundError(f"record {rec['id']} has no video_path")
            ex = self.prepare(0, {"video": rec["video_path"], "conversations": question_prompt(rec["prompt"]), **meta})
            if "error" in ex:
                raise RuntimeError(f"{ex['error']}: {ex['message']}")
            keep = ("input_ids", "labels", "placeholder_index", "frames", "geometry_tokens", *meta)
            ex = {k: ex[k] for k in keep if k in ex}
        return {**rec, "example": ex}


def batch_shards(mesh: jax.sharding.Mesh, rules: sharding.LogicalRules = sharding.DEFAULT_RULES) -> int:
    """How many ways the ``batch`` rule splits a batch on ``mesh`` (e.g. data x fsdp)."""
    spec = sharding.logical_to_spec(("batch",), None, mesh, rules)
    entry = spec[0] if len(spec) else None
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return math.prod(mesh.shape[a] for a in axes)


class ShardedVLM3RPredictor:
    """``predict_fn`` for :func:`vlm3r_jax.eval.runner.run_eval` over a loaded
    :class:`vlm3r_jax.infer.vlm3r_model.VLM3RModel` (see the module docstring).

    ``batch_size``: records per call (the runner's batch); the device batch is that rounded up to
    a multiple of :func:`batch_shards`. ``mesh`` defaults to all devices on ``data``."""

    uses_jax = True

    def __init__(
        self,
        handle: Any,
        *,
        batch_size: int,
        mesh: jax.sharding.Mesh | None = None,
        rules: sharding.LogicalRules = sharding.DEFAULT_RULES,
        num_frames: int = 32,
        max_new_tokens: int = 16,
        text_only: bool = False,
        length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
        name: str | None = None,
        geometry_cache: str = "",
        video_root: str = "",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; must be >= 1")
        self.handle = handle
        self.mesh = mesh if mesh is not None else sharding.make_mesh()
        self.rules = tuple(rules)
        self.shards = batch_shards(self.mesh, self.rules)
        self.rows = -(-batch_size // self.shards) * self.shards
        self.max_new_tokens = int(max_new_tokens)
        self.text_only = text_only
        vcfg = handle.cfg
        key = ""
        if geometry_cache and not text_only:  # cached CUT3R tokens instead of the online pass
            key = key_for_model(handle.model, num_frames, vcfg.vision.image_size)
            check_manifest(geometry_cache, key)
        self.pipeline_cfg = PipelineConfig.for_eval(
            geometry_cache=geometry_cache if key else "", geometry_key=key, geometry_select=vcfg.spatial_select,
            video_root=video_root if key else "",
            num_frames=num_frames,
            siglip_size=vcfg.vision.image_size,
            geometry_size=None,  # the model resizes the SigLIP view for CUT3R itself
            batch_size=self.rows,
            length_buckets=tuple(int(b) for b in length_buckets),
            max_length=vcfg.model_max_length,
            video_tokens_per_frame=0 if text_only else vcfg.projector.tokens_per_frame(),
            worker_count=0,
            system=handle.template.system,
        )
        self.prepare = EvalExample(handle.tokenizer, self.pipeline_cfg, text_only)
        self.name = name or ("VLM-3R (ours, text only)" if text_only else "VLM-3R (ours)")
        self.params = distributed.shard_state(handle.params, self.mesh, self.rules)
        self._stop_ids, self._pad_id = stop_ids_array(vcfg.llm.eos_token_ids)
        self._generate = jax.jit(self._generate_impl, static_argnames=("max_new_tokens",))

    def _generate_impl(self, params, input_ids, frames, attention_mask, stop_ids, pad_id, geometry_tokens=None, *,
                       max_new_tokens):
        h = self.handle
        embeds, emb_mask = h.engine.prefill(params, input_ids, frames, attention_mask, geometry_tokens)
        c = h.cfg.llm
        cache = KVCache.init(c.num_layers, embeds.shape[0], embeds.shape[1] + max_new_tokens, c.num_kv_heads,
                             c.head_dim, jnp.dtype(c.dtype))
        out = generate(h.engine.step_fn, h.engine.embed_fn, params, cache, embeds, emb_mask, jax.random.key(0), stop_ids, pad_id,
                       config=SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0))
        return out.tokens

    def device_batch(self, batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The padded host batch of ``batch`` (records with ``example``), placed on the mesh:
        ``input_ids``/``attention_mask`` int [R, T] (right padded to a bucket), ``frames`` float
        [R, N, S, S, 3]; R = :attr:`rows`."""
        if not 0 < len(batch) <= self.rows:
            raise ValueError(f"{len(batch)} records for a device batch of {self.rows} rows")
        host = collate([r["example"] for r in batch], self.pipeline_cfg, self.handle.tokenizer.pad_id, self.rows)
        arrays = {"input_ids": host["input_ids"], "attention_mask": host["attention_mask"]}
        if not self.text_only:
            arrays["frames"] = host["frames"]
        if "geometry_tokens" in host:
            arrays["geometry_tokens"] = host["geometry_tokens"]
        if jax.process_count() == 1:
            return sharding.shard_batch(arrays, self.mesh, self.rules)
        # every process holds the whole host batch: each places its own shards
        shs = {k: sharding.batch_sharding(self.mesh, v.ndim, self.rules) for k, v in arrays.items()}
        return distributed.put(arrays, shs)

    def __call__(self, batch: list[dict[str, Any]], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers to ``batch`` (records with ``example``); ``max_new_tokens`` overrides the
        constructor's for this call (one more compilation per distinct value)."""
        dev = self.device_batch(batch)
        with sharding.use_mesh(self.mesh, self.rules):
            toks = self._generate(self.params, dev["input_ids"], dev.get("frames"), dev["attention_mask"],
                                  self._stop_ids, self._pad_id, dev.get("geometry_tokens"),
                                  max_new_tokens=int(max_new_tokens or self.max_new_tokens))
        toks = distributed.to_host(toks)[: len(batch)]  # the filler rows are dropped here
        dec = self.handle.tokenizer.decode
        return [dec([int(t) for t in row], skip_special_tokens=True).strip() for row in toks]
