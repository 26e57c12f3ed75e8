"""The Grain video pipeline: source -> shard -> shuffle/repeat -> decode + views + tokenize ->
skip bad records -> bucket-pad + batch -> worker processes -> global ``jax.Array`` batch.

Build it with :func:`make_iterator` (or :func:`build_dataset` for the bare Grain dataset). See
docs/data_pipeline.md for the batch layout. Determinism: the record order depends only on
``(seed, epoch)`` (``MapDataset.shuffle`` re-seeded per epoch by ``repeat``), and the per-example
RNG handed to an optional ``augment`` hook is ``np.random.default_rng([seed, epoch, index])``;
nothing depends on the worker count's timing, so a restored iterator replays the same stream.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
from grain._src.python.dataset import dataset as grain_dataset

from data_pipeline.chat_template import (
    IGNORE_INDEX,
    ConversationError,
    TemplateConfig,
    add_time_instruction,
    tokenize_conversation,
    tokenize_prompt,
)
from data_pipeline.sources import BadRecordError, is_error
from data_pipeline.tokenizer import QwenTokenizer
from data_pipeline.video import DecodedVideo, VideoError, load_video
from data_pipeline.views import ViewConfig, make_views
from data_pipeline.worker_lifetime import exit_with_parent

log = logging.getLogger(__name__)

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
        import ml_collections

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
        if self.cfg.video_cache_size > 0:
            for a in views.values():
                a.flags.writeable = False  # shared by every row of this video: an augment must copy
            # Rows need only the views and the timing; the raw decoded frames are not kept.
            video = dataclasses.replace(video, frames=video.frames[:0].copy())  # a view would pin the buffer
            self._videos[path] = (video, views)
            while len(self._videos) > self.cfg.video_cache_size:
                self._videos.popitem(last=False)
        return video, views

    def __call__(self, index: int, record: dict) -> dict:
        epoch, pos = divmod(int(index), self.epoch_length)
        if is_error(record):
            if self.cfg.strict:
                raise BadRecordError(record["file"], record["line"], record["error"], record["message"])
            return {**record, "epoch": epoch}
        try:
            return self._prepare(record, epoch, pos)
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


# --- skip + bucket + batch (an IterDataset so its state is the parent's) ------------------------
def bucket_length(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return int(b)
    raise ValueError(f"sequence of {n} tokens is longer than the largest bucket {buckets[-1]}")


def collate(examples: Sequence[dict], cfg: PipelineConfig, pad_id: int, rows: int | None = None) -> dict:
    """Pads ``examples`` to one bucket and stacks them; ``rows`` > len(examples) appends
    copies of the last example with ``valid = 0`` (a partial final batch kept in eval)."""
    n = len(examples)
    rows = rows or n
    t = bucket_length(max(len(e["input_ids"]) for e in examples), cfg.length_buckets)
    ids = np.full((rows, t), pad_id, np.int32)
    labels = np.full((rows, t), IGNORE_INDEX, np.int32)
    mask = np.zeros((rows, t), np.int32)
    ph = np.zeros((rows,), np.int32)
    src = [examples[min(i, n - 1)] for i in range(rows)]
    for r, e in enumerate(src):
        L = len(e["input_ids"])
        s = t - L if cfg.padding_side == "left" else 0
        ids[r, s : s + L] = e["input_ids"]
        labels[r, s : s + L] = e["labels"]
        mask[r, s : s + L] = 1
        ph[r] = s + int(e["placeholder_index"])
    out = {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "placeholder_index": ph,
        "valid": (np.arange(rows) < n).astype(np.int32),
        "num_text_tokens": mask.sum(1).astype(np.int32),
    }
    for k in ("frames", "geometry_frames", "frame_indices", "frame_times", "duration", "truncated", "epoch", "index"):
        if k in examples[0]:
            out[k] = np.stack([np.asarray(e[k]) for e in src])
    for k in TEXT_KEYS:
        out[k] = np.asarray([e[k] for e in src])
    return out


def pad_to_length(batch: dict, length: int, cfg: PipelineConfig, pad_id: int) -> dict:
    """Widens a collated batch's text arrays ``[B, T]`` to ``[B, length]`` exactly as
    :func:`collate` would have padded them to that bucket (pad ids, -100 labels, mask 0 on the
    padding side; ``placeholder_index`` shifted under left padding)."""
    t = batch["input_ids"].shape[1]
    d = int(length) - t
    if d < 0:
        raise ValueError(f"cannot pad a batch of length {t} down to {length}")
    if d == 0:
        return batch
    out = dict(batch)
    width = ((0, 0), (d, 0)) if cfg.padding_side == "left" else ((0, 0), (0, d))
    for k, fill in (("input_ids", pad_id), ("labels", IGNORE_INDEX), ("attention_mask", 0)):
        out[k] = np.pad(batch[k], width, constant_values=fill)
    if cfg.padding_side == "left":
        out["placeholder_index"] = batch["placeholder_index"] + np.int32(d)
    return out


def common_length(length: int) -> int:
    """The largest ``length`` over all JAX processes (one tiny all-gather; every process must
    call it for the same batch)."""
    if jax.process_count() == 1:
        return int(length)
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int32(length))))


class NoUsableRecordsError(ValueError):
    """A whole epoch of this shard's records went by without one usable example."""


class _BatchIterator(grain_dataset.DatasetIterator):
    def __init__(self, parent: grain_dataset.DatasetIterator, rows: int, cfg: PipelineConfig, pad_id: int,
                 epoch_length: int):
        super().__init__(parent)
        self._rows, self._cfg, self._pad = rows, cfg, pad_id
        self._epoch_length = epoch_length
        self._bad_run = 0  # error records since the last usable one
        self._any_usable = False
        self._done = False

    def _check_bad_run(self, skipped: list[dict], limit: int) -> None:
        # With num_epochs=None every record failing would otherwise loop forever in silence. One
        # usable record per epoch bounds a run of failures by two epochs (end of one, start of the next).
        if self._bad_run < limit:
            return
        kinds = collections.Counter(s["error"] for s in skipped)
        example = skipped[-1] if skipped else {}
        raise NoUsableRecordsError(
            f"none of the {self._epoch_length} records of this shard gave a usable example ({dict(kinds)}); "
            f"e.g. record {example.get('id')!r} of {example.get('file')}: {example.get('message')}. "
            "Check the video root, the annotation files and the pipeline config (num_frames, max_length)")

    def __next__(self) -> dict:
        if self._done:
            raise StopIteration
        buf: list[dict] = []
        skipped: list[dict] = []
        while len(buf) < self._rows:
            try:
                el = next(self._parent)
            except StopIteration:
                self._done = True
                if not self._any_usable:
                    self._check_bad_run(skipped, self._epoch_length)
                break
            if is_error(el):
                skipped.append({k: el.get(k) for k in ("error", "message", "file", "line", "id", "epoch")})
                self._bad_run += 1
                self._check_bad_run(skipped, 2 * self._epoch_length)
            else:
                buf.append(el)
                self._bad_run = 0
                self._any_usable = True
        if len(buf) == self._rows or (buf and not self._cfg.drop_remainder):
            batch = collate(buf, self._cfg, self._pad, self._rows)
            batch["skipped"] = skipped
            return batch
        if buf:  # dropped remainder: report it so nothing disappears silently
            skipped.append({"error": "dropped_remainder", "message": f"{len(buf)} examples in a partial last batch",
                            "file": "", "line": 0, "id": "", "epoch": int(buf[-1]["epoch"])})
        if skipped:
            return {"skipped": skipped}  # consumed by VideoBatchIterator, never reaches the user
        raise StopIteration

    def get_state(self) -> dict:
        return self._parent.get_state()

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state)
        self._done = False


class BatchAndSkip(grain_dataset.IterDataset):
    """Drops error records (carrying them in the batch's ``skipped`` list) and bucket-pads
    ``rows`` valid examples into one batch."""

    def __init__(self, parent: grain.IterDataset, rows: int, cfg: PipelineConfig, pad_id: int, epoch_length: int):
        super().__init__(parent)
        self._rows, self._cfg, self._pad = rows, cfg, pad_id
        self._epoch_length = epoch_length

    def __iter__(self) -> _BatchIterator:
        return _BatchIterator(self._parent.__iter__(), self._rows, self._cfg, self._pad, self._epoch_length)


# --- the dataset -------------------------------------------------------------------------------
def _ensure_absl_flags() -> None:
    # Grain's worker processes read absl flags; outside an absl app nobody parses them.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def process_shard() -> tuple[int, int]:
    """(index, count) of this JAX process (grain's ShardByJaxProcess)."""
    opts = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    return opts.shard_index, opts.shard_count


def build_dataset(
    source: Any,
    tokenizer: QwenTokenizer,
    cfg: PipelineConfig,
    *,
    shard: tuple[int, int] | None = None,
    augment: Callable[[dict, np.random.Generator], dict] | None = None,
) -> grain.IterDataset:
    """The Grain pipeline for this process's shard (worker processes included)."""
    index, count = shard if shard is not None else process_shard()
    if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
        raise ValueError(f"shard=(index, count) needs 0 <= index < count, got {shard}")
    if cfg.batch_size % count:
        raise ValueError(f"global batch_size {cfg.batch_size} is not divisible by {count} processes")
    rows = cfg.batch_size // count
    n = len(source)
    if n == 0:
        raise ValueError("the source has no records")
    ds = grain.MapDataset.source(source)
    if count > 1:  # equal shard sizes keep every host in lock step
        ds = ds[: (n // count) * count][index::count]
    epoch_length = len(ds)
    if epoch_length == 0:
        raise ValueError(f"shard {index} of {count} gets no records: the source has {n}, fewer than the "
                         f"{count} shards")
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    if cfg.num_epochs != 1:
        ds = ds.repeat(cfg.num_epochs)
    ds = ds.map_with_index(PrepareExample(tokenizer, cfg, epoch_length, augment))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=2 * rows))
    it = BatchAndSkip(it, rows, cfg, tokenizer.pad_id, epoch_length)
    if cfg.worker_count > 0:
        _ensure_absl_flags()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=cfg.worker_count, per_worker_buffer_size=cfg.worker_buffer_size),
            worker_init_fn=exit_with_parent,
        )
    return it


# --- the user-facing iterator: skip stats, epoch summaries, checkpointable ------------------------
class VideoBatchIterator(grain_dataset.DatasetIterator):
    """Yields host batches (numpy); keeps per-epoch skip counts; ``get_state``/``set_state`` are
    JSON-able, so ``grain.checkpoint.CheckpointSave/Restore`` (Orbax) save it with the train state."""

    def __init__(
        self,
        dataset: grain.IterDataset,
        log_fn: Callable[[str], None] | None = None,
        cfg: PipelineConfig | None = None,
        pad_id: int | None = None,
    ):
        self._it = dataset.__iter__()
        super().__init__(self._it)
        self._cfg, self._pad_id = cfg, pad_id
        self.last_local_length = 0  # this host's bucket before the cross-process agreement
        self._log = log_fn or log.info
        self.skips: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self.examples: collections.Counter = collections.Counter()
        self.last_skipped: list[dict] = []
        self._epoch = 0

    def _record(self, skipped: list[dict]) -> None:
        for s in skipped:
            self.skips[int(s.get("epoch") or 0)][s["error"]] += 1
            self._log(f"data: skipped {s['error']} record {s.get('id') or ''} ({s.get('message')})")
        self.last_skipped = skipped

    def summary(self, epoch: int) -> str:
        c = self.skips.get(epoch, collections.Counter())
        kinds = ", ".join(f"{k}={v}" for k, v in sorted(c.items())) or "none"
        return f"data epoch {epoch}: {self.examples[epoch]} examples, {sum(c.values())} skipped ({kinds})"

    def _advance_epoch(self, epoch: int) -> None:
        while self._epoch < epoch:
            self._log(self.summary(self._epoch))
            self._epoch += 1

    def __next__(self) -> dict:
        while True:
            try:
                batch = next(self._it)
            except StopIteration:
                self._log(self.summary(self._epoch))
                raise
            self._record(batch.pop("skipped", []))
            if "input_ids" in batch:
                break
        for e, v in zip(batch["epoch"].tolist(), batch["valid"].tolist(), strict=True):
            self.examples[int(e)] += int(v)
        self._advance_epoch(int(batch["epoch"].max()))
        # Each host pads its rows to the bucket of ITS longest row; the rows of one global batch
        # must share a length, so the hosts agree on the largest (= the bucket one process
        # reading the whole global batch would pick).
        self.last_local_length = int(batch["input_ids"].shape[1])
        if self._cfg is not None and jax.process_count() > 1:
            batch = pad_to_length(batch, common_length(self.last_local_length), self._cfg, self._pad_id)
        return batch

    def metrics(self) -> dict[str, int]:
        """Totals for the metrics writer: ``data/skipped``, ``data/skipped/<kind>``, ``data/examples``."""
        total: collections.Counter = collections.Counter()
        for c in self.skips.values():
            total.update(c)
        out = {"data/skipped": int(sum(total.values())), "data/examples": int(sum(self.examples.values()))}
        out.update({f"data/skipped/{k}": int(v) for k, v in total.items()})
        return out

    def get_state(self) -> dict:
        return {
            "grain": self._it.get_state(),
            "epoch": self._epoch,
            "skips": {str(e): dict(c) for e, c in self.skips.items()},
            "examples": {str(e): v for e, v in self.examples.items()},
        }

    def set_state(self, state: dict) -> None:
        self._it.set_state(state["grain"])
        self._epoch = int(state.get("epoch", 0))
        self.skips = collections.defaultdict(
            collections.Counter, {int(e): collections.Counter(c) for e, c in state.get("skips", {}).items()}
        )
        self.examples = collections.Counter({int(e): int(v) for e, v in state.get("examples", {}).items()})

    def start_prefetch(self) -> None:
        if hasattr(self._it, "start_prefetch"):
            self._it.start_prefetch()

    def close(self) -> None:
        """Stops the worker processes (also done at garbage collection, but not reliably)."""
        if hasattr(self._it, "close"):
            self._it.close()

    def __enter__(self) -> VideoBatchIterator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_iterator(
    source: Any,
    tokenizer: QwenTokenizer,
    cfg: PipelineConfig,
    *,
    shard: tuple[int, int] | None = None,
    augment: Callable[[dict, np.random.Generator], dict] | None = None,
    log_fn: Callable[[str], None] | None = None,
) -> VideoBatchIterator:
    """The checkpointable host-batch iterator (see :class:`VideoBatchIterator`). With several JAX
    processes (and ``shard`` left to the default, one shard per process), every process must call
    ``next`` for every batch: the hosts agree on the batch's length bucket."""
    return VideoBatchIterator(build_dataset(source, tokenizer, cfg, shard=shard, augment=augment), log_fn, cfg,
                              tokenizer.pad_id)


# --- global arrays -----------------------------------------------------------------------------
def to_global_batch(batch: Mapping[str, Any], mesh: jax.sharding.Mesh, rules: Any = None) -> dict:
    """Host batch (this process's rows) -> dict of global ``jax.Array`` sharded over the mesh's
    ``batch`` rule (``jax.make_array_from_process_local_data``); string fields stay numpy."""
    from vlm3r_jax.sharding import DEFAULT_RULES, batch_sharding

    rules = DEFAULT_RULES if rules is None else rules
    out: dict[str, Any] = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.dtype.kind in "biuf" and v.ndim >= 1:
            out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim, rules), v)
        else:
            out[k] = v
    return out


# --- Orbax ---------------------------------------------------------------------------------------
def checkpoint_save_args(iterator: VideoBatchIterator) -> Any:
    """Orbax args that save the iterator state (grain's JSON handler; one file per process):
    ``mngr.save(step, args=ocp.args.Composite(state=..., data=checkpoint_save_args(it)))``."""
    return grain.checkpoint.CheckpointSave(iterator)


def checkpoint_restore_args(iterator: VideoBatchIterator) -> Any:
    """Orbax args that restore into a freshly built iterator of the same pipeline config."""
    return grain.checkpoint.CheckpointRestore(iterator)
