"""lmms-eval model ``vlm3r_jax``: our VLM-3R answering lmms-eval's ``generate_until`` requests.

``--model_args`` follows the official VLM-3R adapter (``thinking-in-space/lmms_eval/models/vlm_3r.py``,
registered there as ``vlm_3r``) where a name makes sense here:

| arg | meaning |
|---|---|
| ``pretrained`` | our checkpoint dir, a released LoRA dir, or a Hub id (as :func:`vlm3r_jax.api.load_vlm3r`) |
| ``model_base`` | the LLaVA-Video-Qwen2 base (dir or Hub id), released LoRA only |
| ``geometry`` | the CUT3R ``.pth`` (ours; the release's config only names a path on its authors' disk) |
| ``max_frames_num`` | frames sampled uniformly per video (default 32, as the official run) |
| ``conv_template`` | ``qwen_1_5`` only (the template VLM-3R was trained with) |
| ``batch_size`` | questions per device batch (lmms-eval's ``--batch_size`` also lands here) |
| ``dtype`` | ``float32`` (default) or ``bfloat16`` |
| ``fsdp`` | shard the weights over this many devices (the rest split the batch) |

The official adapter's torch-only knobs (``device_map``, ``attn_implementation``, the
``mm_*`` pooling overrides, ...) are accepted and ignored with a warning: the checkpoint's own
config decides those. Anything else is an error.

Each request is answered like ``launch.eval``'s model predictor does (the same
:class:`~vlm3r_jax.eval.sharded.ShardedVLM3RPredictor`): PyAV decode of ``max_frames_num``
uniformly sampled frames, ``<image>\\n`` + lmms-eval's question text in the qwen_1_5 template,
greedy decoding to ``<|im_end|>`` or ``max_new_tokens`` (default 1024 as the official adapter),
the text cut at the first of ``until`` (lmms-eval's stop strings) and stripped. Sampling, beams
and ``loglikelihood`` are refused: the VSI-Bench task only generates, greedily.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

from vlm3r_jax import api, sharding
from vlm3r_jax.eval.sharded import ShardedVLM3RPredictor

log = logging.getLogger(__name__)

# The official adapter's arguments that configure torch or override the model config.
IGNORED_OFFICIAL_ARGS = (
    "device", "device_map", "attn_implementation", "use_cache", "truncation", "truncate_context", "model_name",
    "video_decode_backend", "overwrite", "delay_load", "tie_weights", "max_batch_size", "mm_resampler_type",
    "mm_spatial_pool_stride", "mm_spatial_pool_out_channels", "mm_spatial_pool_mode", "mm_newline_position",
    "mm_pooling_position",
)
DEFAULT_MAX_NEW_TOKENS = 1024  # the official adapter's, when the task names none


@dataclass
class _Job:
    """One ``generate_until`` request, unpacked."""

    index: int
    context: str
    gen_kwargs: dict
    video: str | None
    key: str
    max_new_tokens: int
    until: tuple[str, ...]


def _greedy_settings(gen_kwargs: dict, where: str) -> tuple[int, tuple[str, ...]]:
    """(max_new_tokens, stop strings) of a request; ValueError for sampling or beam search."""
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    if temperature > 0 or gen_kwargs.get("do_sample") or int(gen_kwargs.get("num_beams") or 1) > 1:
        raise ValueError(f"{where}: vlm3r_jax decodes greedily only (temperature 0, do_sample false, 1 beam), "
                         f"got temperature={temperature}, do_sample={gen_kwargs.get('do_sample')}, "
                         f"num_beams={gen_kwargs.get('num_beams')}")
    until = gen_kwargs.get("until") or ()
    if isinstance(until, str):
        until = (until,)
    return int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS), tuple(s for s in until if s)


def cut_at_stops(text: str, until: tuple[str, ...]) -> str:
    """``text`` up to the first occurrence of each stop string in turn, stripped (as lmms-eval's
    Hugging Face models cut their continuations)."""
    for stop in until:
        text = text.split(stop)[0]
    return text.strip()


def _batch_size(value: Any) -> int:
    """lmms-eval passes ``--batch_size`` as given: an int, "8", or "auto[:N]" (no memory probe here)."""
    if isinstance(value, int) and value >= 1:
        return value
    if isinstance(value, str) and value.strip().isdigit() and int(value) >= 1:
        return int(value)
    log.warning("vlm3r_jax: batch_size=%r is not a positive integer; using 1", value)
    return 1


class VLM3RJax(lmms):
    """See the module docstring."""

    is_simple = True

    def __init__(self, pretrained: str | None = None, model_base: str | None = None, geometry: str | None = None,
                 max_frames_num: int = 32, conv_template: str = "qwen_1_5", batch_size: Any = 1,
                 dtype: str = "float32", fsdp: int = 1, **kwargs: Any) -> None:
        super().__init__()
        unknown = sorted(set(kwargs) - set(IGNORED_OFFICIAL_ARGS))
        if unknown:
            raise TypeError(f"vlm3r_jax: unknown model_args {unknown}; accepted: pretrained, model_base, geometry, "
                            "max_frames_num, conv_template, batch_size, dtype, fsdp (and the official adapter's "
                            "torch settings, which are ignored)")
        ignored = sorted(k for k, v in kwargs.items() if v is not None and k not in ("device", "max_batch_size"))
        if ignored:
            log.warning("vlm3r_jax: ignoring %s (the checkpoint's config decides these)", ", ".join(ignored))
        if not pretrained:
            raise ValueError("vlm3r_jax: set --model_args pretrained=<checkpoint dir or Hub id>[,model_base=...]")
        if conv_template != "qwen_1_5":
            raise ValueError(f"vlm3r_jax: conv_template={conv_template!r}; only 'qwen_1_5' (VLM-3R's) is built")
        self.num_frames = int(max_frames_num)
        self.batch_size = _batch_size(batch_size)
        self.model = api.load_vlm3r(pretrained, base=model_base or None, geometry=geometry or None, dtype=dtype,
                                    num_frames=self.num_frames)
        self.model.check_frames(self.num_frames)
        self.predictor = ShardedVLM3RPredictor(
            self.model, batch_size=self.batch_size, mesh=sharding.make_mesh({"data": -1, "fsdp": int(fsdp)}),
            num_frames=self.num_frames, name="vlm3r_jax")

    def _job(self, index: int, request: Instance) -> _Job:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        where = f"{task}/{split}/{doc_id}"
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else None
        flat = [v for item in (visuals or []) for v in (item if isinstance(item, (list, tuple)) else [item])]
        if len(flat) > 1 or (flat and not isinstance(flat[0], str)):
            raise ValueError(f"{where}: vlm3r_jax answers about one video file per question, got "
                             f"{[type(v).__name__ for v in flat]}")
        max_new, until = _greedy_settings(dict(gen_kwargs or {}), where)
        return _Job(index, context, dict(gen_kwargs or {}), flat[0] if flat else None, where, max_new, until)

    def _answer(self, jobs: list[_Job], max_new_tokens: int) -> list[str]:
        """Raw answers for ``jobs`` (one device batch). A video that cannot be read answers "" (scored 0,
        as the official adapter's error text is) instead of ending the run."""
        out: dict[int, str] = {}
        ready, ready_jobs = [], []  # side by side: --repeats K asks the same question (key) K times
        for job in jobs:
            if job.video is None:
                out[job.index] = self.model.answer(None, job.context, max_new_tokens=max_new_tokens)
                continue
            try:
                ready.append(self.predictor.prepare({"id": job.key, "prompt": job.context, "video_path": job.video}))
                ready_jobs.append(job)
            except Exception as e:  # any decode / length error fails this question only
                log.error("vlm3r_jax: %s unanswered: %s: %s", job.key, type(e).__name__, e)
                out[job.index] = ""
        if ready:
            texts = self.predictor(ready, max_new_tokens=max_new_tokens)
            out.update({job.index: text for job, text in zip(ready_jobs, texts, strict=True)})
        return [out[job.index] for job in jobs]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answers in request order; requests sharing ``max_new_tokens`` are batched together."""
        jobs = [self._job(i, r) for i, r in enumerate(requests)]
        groups: dict[int, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.max_new_tokens, []).append(job)
        answers = [""] * len(jobs)
        with tqdm(total=len(jobs), disable=self.rank != 0, desc="vlm3r_jax answering") as bar:
            for max_new, group in groups.items():
                for start in range(0, len(group), self.batch_size):
                    chunk = group[start:start + self.batch_size]
                    for job, text in zip(chunk, self._answer(chunk, max_new), strict=True):
                        answers[job.index] = cut_at_stops(text, job.until)
                        self.cache_hook.add_partial("generate_until", (job.context, job.gen_kwargs),
                                                    answers[job.index])
                    bar.update(len(chunk))
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("vlm3r_jax answers generate_until tasks (vsibench, ...) only; loglikelihood "
                                  "(multiple choice by option likelihood) is not built")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("vlm3r_jax answers single-round generate_until tasks only; for multi-turn use "
                                  "vlm3r_jax.api.load_vlm3r(...).chat(video)")
