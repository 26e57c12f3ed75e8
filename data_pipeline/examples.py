"""One record -> one example: decode the sampled frames (PyAV, an optional per-worker LRU of
decoded videos), make the SigLIP/CUT3R views, apply the chat template and tokenise.
:class:`PrepareExample` returns an error dict instead of raising for a bad record or video, so
the batching stage (:mod:`data_pipeline.batching`) can skip and count it."""


from __future__ import annotations

import collections
import dataclasses
import os
import traceback
from collections.abc import Callable, Mapping

import numpy as np

from data_pipeline import geometry_cache
from data_pipeline.chat_template import (
    ConversationError,
    add_time_instruction,
    tokenize_conversation,
    tokenize_prompt,
)
from data_pipeline.pipeline_config import PipelineConfig
from data_pipeline.sources import BadRecordError, is_error
from data_pipeline.tokenizer import QwenTokenizer
from data_pipeline.video import DecodedVideo, VideoError, load_video
from data_pipeline.views import ViewConfig, make_views
from vlm3r_jax import storage
from vlm3r_jax.models.vlm3r import spatial_parts


# --- per-example transform ---------------------------------------------------------------------
def decode_threads(cfg: PipelineConfig) -> int:
    """Decoder threads per video (0 = FFmpeg's choice), resolving ``cfg.decode_threads=0``."""
    if cfg.decode_threads > 0 or cfg.worker_count <= 0:
        return cfg.decode_threads
    return max(1, (os.cpu_count() or 1) // cfg.worker_count)


def _error(kind: str, message: str, record: Mapping | None, epoch: int) -> dict:
    r = record or {}
    return {"error": kind, "message": message, "file": str(r.get("file", "")), "line": int(r.get("line", 0) or 0),
            "id": str(r.get("id", "")), "epoch": epoch}


class PrepareExample:
    """record -> example dict (or an error dict). Picklable (runs in Grain worker processes)."""

    def __init__(
        self,
        tokenizer: QwenTokenizer,
        cfg: PipelineConfig,
        epoch_length: int,
        augment: Callable[[dict, np.random.Generator], dict] | None = None,
    ):
        self.tok = tokenizer
        self.cfg = cfg
        self.epoch_length = max(int(epoch_length), 1)
        self.views = ViewConfig(cfg.siglip_size, cfg.geometry_size)
        self.decode_threads = decode_threads(cfg)
        self.template = cfg.template()
        self.augment = augment
        self._videos: collections.OrderedDict[str, tuple[DecodedVideo, dict]] = collections.OrderedDict()

    def __getstate__(self) -> dict:
        # Each worker process starts with an empty cache; decoded frames never cross a pickle.
        return {**self.__dict__, "_videos": collections.OrderedDict()}

    def _video(self, path: str) -> tuple[DecodedVideo, dict]:
        """(decoded video, its model views), from the per-process LRU when ``video_cache_size`` > 0
        (a cached video's ``frames`` is empty: the views hold its pixels)."""
        hit = self._videos.get(path)
        if hit is not None:
            self._videos.move_to_end(path)
            return hit
        video = load_video(path, self.cfg.num_frames, self.cfg.frames_dir_fps, self.decode_threads)
        views = make_views(video.frames, self.views)
        if self.cfg.geometry_cache:
            views["geometry_tokens"] = self._geometry_tokens(path, len(video.indices))
        if self.cfg.video_cache_size > 0:
            for a in views.values():
                a.flags.writeable = False  # shared by every row of this video: an augment must copy
            # Rows need only the views and the timing; the raw decoded frames are not kept.
            video = dataclasses.replace(video, frames=video.frames[:0].copy())  # a view would pin the buffer
            self._videos[path] = (video, views)
            while len(self._videos) > self.cfg.video_cache_size:
                self._videos.popitem(last=False)
        return video, views

    def _geometry_tokens(self, path: str, num_frames: int) -> np.ndarray:
        """Cached CUT3R tokens of one video -> float32 [F, G, Dg] per ``geometry_select``."""
        cfg = self.cfg
        entry = geometry_cache.entry_path(cfg.geometry_cache, storage.relpath(path, cfg.video_root))
        tokens = geometry_cache.read_entry(entry, cfg.geometry_key, path)
        if tokens.shape[0] != num_frames:
            raise geometry_cache.GeometryCacheError(
                f"{entry}: {tokens.shape[0]} frames cached, the pipeline samples {num_frames}; rebuild the cache")
        groups = {"camera": tokens[:, :1], "patch": tokens[:, 1:]}
        return np.concatenate([groups[p] for p in spatial_parts(cfg.geometry_select)], axis=1).astype(np.float32)

    def __call__(self, index: int, record: dict) -> dict:
        epoch, pos = divmod(int(index), self.epoch_length)
        if is_error(record):
            if self.cfg.strict:
                raise BadRecordError(record["file"], record["line"], record["error"], record["message"])
            return {**record, "epoch": epoch}
        try:
            return self._prepare(record, epoch, pos)
        except geometry_cache.GeometryCacheError:
            raise  # a stale or corrupted cache is never skipped past: the run would silently change
        except (VideoError, ConversationError) as e:
            if self.cfg.strict:
                raise BadRecordError(record.get("file", "?"), record.get("line", 0), e.kind, str(e)) from e
            return _error(e.kind, str(e), record, epoch)
        except Exception as e:  # noqa: BLE001 - one bad file must not kill a long run
            if self.cfg.strict:
                raise
            tb = traceback.format_exception_only(type(e), e)[-1].strip()
            return _error(f"unexpected_{type(e).__name__}", tb, record, epoch)

    def _prepare(self, record: dict, epoch: int, pos: int) -> dict:
        cfg = self.cfg
        video, views = self._video(record["video"])
        conv = [dict(t) for t in record["conversations"]]
        if cfg.mode == "train":
            if cfg.add_time_instruction:
                first = next(i for i, t in enumerate(conv) if t["from"] in ("human", "user"))
                conv[first]["value"] = add_time_instruction(
                    conv[first]["value"], video.duration, video.frame_times.tolist()
                )
            tok = tokenize_conversation(self.tok, conv, self.template)
        else:
            while conv and conv[-1]["from"] in ("gpt", "assistant"):
                conv.pop()
            tok = tokenize_prompt(self.tok, conv, self.template)
        ex = {
            "input_ids": tok.input_ids,
            "labels": tok.labels,
            "placeholder_index": np.int32(tok.placeholder_index),
            "truncated": np.int32(tok.truncated),
            "frame_indices": video.indices.astype(np.int32),
            "frame_times": video.frame_times.astype(np.float32),
            "duration": np.float32(video.duration),
            "id": str(record.get("id", "")),
            "question_type": str(record.get("question_type", "")),
            "answer": str(record.get("answer", "")),
            "epoch": epoch,
            "index": pos,
            **views,
        }
        if self.augment is not None:
            ex = self.augment(ex, np.random.default_rng([self.cfg.seed, epoch, pos]))
        return ex


