"""Skip + bucket + batch: error dicts are dropped and counted, examples are padded to the smallest
length bucket that fits and stacked into host batches. :class:`BatchAndSkip` is an
``IterDataset`` so its iterator state is its parent's (checkpointable with the pipeline)."""


from __future__ import annotations

import collections
from collections.abc import Sequence

import grain
import jax
import numpy as np

from data_pipeline.chat_template import (
    IGNORE_INDEX,
)
from data_pipeline.pipeline_config import TEXT_KEYS, PipelineConfig
from data_pipeline.sources import is_error


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
    for k in ("frames", "geometry_frames", "geometry_tokens", "frame_indices", "frame_times", "duration", "truncated", "epoch", "index"):
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


class _BatchIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, rows: int, cfg: PipelineConfig, pad_id: int,
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


class BatchAndSkip(grain.IterDataset):
    """Drops error records (carrying them in the batch's ``skipped`` list) and bucket-pads
    ``rows`` valid examples into one batch."""

    def __init__(self, parent: grain.IterDataset, rows: int, cfg: PipelineConfig, pad_id: int, epoch_length: int):
        super().__init__(parent)
        self._rows, self._cfg, self._pad = rows, cfg, pad_id
        self._epoch_length = epoch_length

    def __iter__(self) -> _BatchIterator:
        return _BatchIterator(self._parent.__iter__(), self._rows, self._cfg, self._pad, self._epoch_length)


