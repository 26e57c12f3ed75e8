"""The evaluation stream: records -> items ready for a predictor, as a Grain dataset.

Each record gets the official prompt, a video check and the predictor's own ``prepare`` (decode +
tokenise for a model), in Grain worker processes when asked. Records already answered in
``samples.jsonl`` are filtered out, so the JSONL itself is the resume position.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import av
import grain

from data_pipeline.pipeline import ensure_absl_flags
from data_pipeline.video import video_input
from data_pipeline.worker_lifetime import exit_with_parent
from vlm3r_jax import storage
from vlm3r_jax.eval import prompts

VIDEO_CHECKS = ("none", "exists", "open")


def check_video(path: str | None, mode: str = "exists") -> str | None:
    """Why the video cannot be used (None when fine). ``mode``: "none" (skip), "exists" (a file is
    there), "open" (PyAV opens it and decodes one frame). ``path`` may be a URI (``gs://``)."""
    if mode not in VIDEO_CHECKS:
        raise ValueError(f"check_videos={mode!r}; expected one of {VIDEO_CHECKS}")
    if mode == "none":
        return None
    if not path or not storage.isfile(path):
        return f"video missing: {path}"
    if mode == "open":
        try:
            with video_input(path) as src, av.open(src) as container:
                if not container.streams.video:
                    return f"video unreadable: {path} has no video stream"
                next(container.decode(video=0))
        except Exception as e:  # any decoder error means the sample cannot be answered
            return f"video unreadable: {path} ({type(e).__name__}: {e})"
    return None


class Pending:
    """Whether a record still needs an answer, given the lines already in samples.jsonl
    (picklable: it runs as a Grain filter, possibly in worker processes)."""

    def __init__(self, done: Mapping[str, Mapping[str, Any]], retry_failed: bool):
        self.status = {rid: line.get("status") for rid, line in done.items()}
        self.retry_failed = retry_failed

    def __call__(self, rec: Mapping[str, Any]) -> bool:
        rid = str(rec["id"])
        if rid not in self.status:
            return True
        prev = self.status[rid]
        if prev == "malformed" and not rec.get("_malformed"):
            return True  # the record was fixed since: answer it now
        return self.retry_failed and prev == "failed"


class _PrepareItem:
    """record -> ``{"record", "status" (ready|failed|malformed), "error"}``: the official prompt,
    the video check and the predictor's own ``prepare`` (picklable; runs in Grain workers)."""

    def __init__(
        self,
        benchmark: str,
        check_videos: str,
        prompt_kwargs: Mapping[str, str] | None,
        prepare: Callable[[dict[str, Any]], dict[str, Any]] | None,
    ):
        self.benchmark, self.check_videos = benchmark, check_videos
        self.prompt_kwargs = dict(prompt_kwargs or {})
        self.prepare = prepare

    def __call__(self, rec: Mapping[str, Any]) -> dict[str, Any]:
        rec = dict(rec)
        if rec.get("_malformed"):
            return {"record": rec, "status": "malformed", "error": rec["_malformed"]}
        why = check_video(rec.get("video_path"), self.check_videos)
        if why:
            return {"record": rec, "status": "failed", "error": why}
        rec["prompt"] = prompts.build_question(rec, self.benchmark, **self.prompt_kwargs)
        if self.prepare is not None:
            try:
                rec = self.prepare(rec)
            except Exception as e:  # an undecodable video fails its sample only
                return {"record": rec, "status": "failed", "error": f"prepare error: {type(e).__name__}: {e}"}
        return {"record": rec, "status": "ready", "error": None}


def eval_dataset(
    records: Sequence[Mapping[str, Any]],
    benchmark: str = "vsibench",
    done: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    retry_failed: bool = False,
    check_videos: str = "exists",
    prompt_kwargs: Mapping[str, str] | None = None,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Any:
    """The eval stream as a ``grain.MapDataset`` over ``records`` (any random-access source, e.g.
    :class:`vlm3r_jax.eval.records.BenchmarkRecords` or a list), in record order: ids finished in
    ``done`` (the lines of samples.jsonl) are filtered out, then each item is
    ``{"record", "status", "error"}`` (see :class:`_PrepareItem`).

    The resume position is therefore the JSONL itself: restarting after a crash yields exactly
    the records without a line, in the same order as the uninterrupted stream's tail. (Grain's
    own iterator state, ``get_state``/``set_state``, also works on it, but is not needed.)"""
    if check_videos not in VIDEO_CHECKS:
        raise ValueError(f"check_videos={check_videos!r}; expected one of {VIDEO_CHECKS}")
    ds = grain.MapDataset.source(records)
    if done:
        ds = ds.filter(Pending(done, retry_failed))
    return ds.map(_PrepareItem(benchmark, check_videos, prompt_kwargs, prepare))


def eval_iterator(
    records: Sequence[Mapping[str, Any]],
    benchmark: str = "vsibench",
    done: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    worker_count: int = 0,
    **kw: Any,
) -> Any:
    """Iterator over :func:`eval_dataset` (filtered items skipped), with ``worker_count`` Grain
    worker processes when > 0 (order is kept)."""
    it = eval_dataset(records, benchmark, done, **kw).to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
    )
    if worker_count > 0:
        ensure_absl_flags()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=2),
                            worker_init_fn=exit_with_parent)
    return iter(it)
