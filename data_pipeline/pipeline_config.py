"""``PipelineConfig``: every knob of the Grain video pipeline (:mod:`data_pipeline.pipeline`),
validated when built."""


from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from data_pipeline.chat_template import (
    TemplateConfig,
)

TEXT_KEYS = ("id", "question_type", "answer")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """All knobs of the pipeline.

    ``batch_size`` is the GLOBAL batch; each JAX process builds ``batch_size // process_count``
    rows. ``length_buckets``: padded text lengths (placeholder counted as one token); a batch is
    padded to the smallest bucket that fits its longest row, so ``jax.jit`` sees at most
    ``len(length_buckets)`` text shapes. ``video_tokens_per_frame`` (210 for VLM-3R) only enters
    the ``max_length`` check. ``mode``: ``train`` (full conversation, labels on answers) or
    ``eval`` (conversation up to the last user turn + generation prompt, labels all -100, the
    reference answer in ``answer``).
    """

    num_frames: int = 32
    siglip_size: int = 384
    geometry_size: int | None = 432
    mode: str = "train"
    batch_size: int = 1
    length_buckets: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    padding_side: str = "right"
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1
    drop_remainder: bool = True
    worker_count: int = 2
    worker_buffer_size: int = 2
    read_threads: int = 1
    strict: bool = False
    add_time_instruction: bool = False
    label_policy: str = "official"
    truncation: str = "error"
    max_length: int = 32768
    video_tokens_per_frame: int = 210
    frames_dir_fps: float = 2.0
    system: str = "You are a helpful assistant."
    # Decoded, view-resized frames of up to this many videos kept per worker process (LRU; 0 = off).
    # VLM-3R-style data asks many questions about one scene video, so repeat rows skip the decode.
    # Memory per worker: entries x F x (siglip_size^2 + geometry_size^2) x 3 x 4 bytes. Files are
    # assumed not to change during a run.
    video_cache_size: int = 0
    # FFmpeg decoder threads per video; 0 = automatic: FFmpeg's own count (one per core) in-process,
    # cores // worker_count in each Grain worker, so the workers do not oversubscribe the cores
    # (frame threads cost ~25% more CPU per frame than one thread when every core is busy).
    decode_threads: int = 0
    # Offline CUT3R tokens (data_pipeline/geometry_cache.py): a cache dir (local path or URI) puts
    # ``geometry_tokens`` [F, G, Dg] (per ``geometry_select``, the model's spatial_select) in every
    # example, so the step skips CUT3R. ``geometry_key`` (geometry_cache.cache_key of the run's
    # CUT3R) must match every entry; ``video_root`` maps a video to its entry.
    geometry_cache: str = ""
    geometry_key: str = ""
    geometry_select: str = "all"
    video_root: str = ""

    def __post_init__(self) -> None:
        if self.mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {self.mode!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if not self.length_buckets or list(self.length_buckets) != sorted(set(self.length_buckets)):
            raise ValueError(f"length_buckets must be strictly increasing, got {self.length_buckets}")
        if self.decode_threads < 0:
            raise ValueError(f"decode_threads must be >= 0 (0 = automatic), got {self.decode_threads}")
        if self.video_cache_size < 0:
            raise ValueError(f"video_cache_size must be >= 0 (0 = no cache), got {self.video_cache_size}")
        positive = {"num_frames": self.num_frames, "siglip_size": self.siglip_size, "batch_size": self.batch_size,
                    "max_length": self.max_length}
        if self.geometry_size is not None:
            positive["geometry_size"] = self.geometry_size
        bad = {k: v for k, v in positive.items() if int(v) < 1}
        if bad:
            raise ValueError(f"pipeline config: {bad} must be >= 1" +
                             (" (geometry_size=None turns the geometry view off)" if "geometry_size" in bad else ""))
        if self.geometry_cache and not (self.geometry_key and self.video_root):
            raise ValueError("geometry_cache needs geometry_key (geometry_cache.cache_key) and video_root")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None (forever), got {self.num_epochs}")

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> PipelineConfig:
        """From a dict / ml_collections ConfigDict (unknown keys are an error)."""
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise ValueError(f"unknown pipeline config keys {bad}; valid keys: {sorted(names)}")
        if "length_buckets" in d:
            d["length_buckets"] = tuple(int(x) for x in d["length_buckets"])
        return cls(**d)

    def to_config_dict(self) -> Any:
        """An ``ml_collections.ConfigDict`` of the fields (for configs/*.py); inverse of
        :meth:`from_mapping`."""

        d = dataclasses.asdict(self)
        d["length_buckets"] = list(d["length_buckets"])
        return ml_collections.ConfigDict(d)

    @classmethod
    def for_eval(cls, **kw: Any) -> PipelineConfig:
        """Evaluation defaults: every record once, in file order, partial last batch kept
        (filler rows have ``valid = 0``), no time instruction (as the official eval)."""
        base = dict(mode="eval", shuffle=False, num_epochs=1, drop_remainder=False, add_time_instruction=False)
        return cls(**{**base, **kw})

    @property
    def video_tokens(self) -> int:
        return self.num_frames * self.video_tokens_per_frame

    def template(self) -> TemplateConfig:
        # The largest bucket bounds the text; max_length bounds the spliced sequence.
        limit = min(self.max_length, self.length_buckets[-1] - 1 + self.video_tokens)
        return TemplateConfig(
            system=self.system, add_time_instruction=self.add_time_instruction, label_policy=self.label_policy,
            max_length=limit, truncation=self.truncation, video_tokens=self.video_tokens,
        )


