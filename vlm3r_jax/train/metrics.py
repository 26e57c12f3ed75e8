"""Metric writers: ``metrics.jsonl`` (always: the demo plots from it), the console, and TensorBoard
event files in the work dir through ``tensorboardX`` (pure Python, no TensorFlow). Every scalar the
loop logs (loss, lr, grad_norm, step_time, data_wait, compute_time, tokens_per_s, mfu, eval/*)
keeps its name as the TensorBoard tag. ``tensorboard --logdir WORKDIR`` shows them;
:func:`read_tensorboard` reads them back without TensorBoard. The work dir may be a URI
(``gs://...``, :mod:`vlm3r_jax.storage`): ``metrics.jsonl`` is then rewritten as one object per
write (object stores have no append) and the event file is written locally and copied on flush."""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from vlm3r_jax import storage

log = logging.getLogger("vlm3r_jax.train")


class JsonlWriter:
    def __init__(self, path: str):
        self._log = storage.LineLog(path)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        row = {"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}
        self._log.write(json.dumps(row) + "\n")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._log.close()


class ConsoleWriter:
    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        text = ", ".join(f"{k}={float(np.asarray(v)):.4g}" for k, v in sorted(scalars.items()))
        log.info("[%d] %s", step, text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MultiWriter:
    def __init__(self, writers: list[Any]):
        self.writers = writers

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write_scalars(step, scalars)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()


class TensorBoardWriter:
    """Scalars as TensorBoard events (``events.out.tfevents.*`` in ``logdir``), written in the
    calling thread (tensorboardX's ``SummaryWriter`` queues events for a thread that its ``flush``
    does not wait for, so a flush could copy a file without the last events). For a URI ``logdir``
    the events go to a local temp dir and each flush copies the file over (one object write: a
    reader sees the previous or the new events file, never a torn one)."""

    def __init__(self, logdir: str):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        self._event, self._scalar = Event, scalar
        self._remote = logdir if storage.is_uri(logdir) else None
        self._local = tempfile.mkdtemp(prefix="vlm3r-tb-") if self._remote else logdir
        os.makedirs(self._local, exist_ok=True)
        self._w = EventsWriter(os.path.join(self._local, "events"))

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        now = time.time()
        for k, v in scalars.items():
            summary = self._scalar(k, float(np.asarray(v)))
            self._w.write_event(self._event(summary=summary, step=int(step), wall_time=now))

    def flush(self) -> None:
        self._w.flush()
        if self._remote:
            storage.copy_tree(self._local, self._remote)

    def close(self) -> None:
        self._w.close()
        if self._remote:
            storage.copy_tree(self._local, self._remote)
            shutil.rmtree(self._local, ignore_errors=True)


def create_writer(workdir: str, *, tensorboard: bool = True) -> MultiWriter:
    writers: list[Any] = [JsonlWriter(os.path.join(workdir, "metrics.jsonl")), ConsoleWriter()]
    if tensorboard:
        try:
            writers.append(TensorBoardWriter(workdir))
        except ImportError:  # a runtime dependency, but a trimmed install should still train
            log.warning("tensorboardX is not installed (pip install tensorboardX): no TensorBoard events")
    return MultiWriter(writers)


def read_tensorboard(workdir: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from the event files in ``workdir``, in write order. Reads the
    TFRecord framing (length, its CRC, payload, payload CRC; CRCs not checked) and parses each
    payload with tensorboardX's ``Event`` proto."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in storage.glob(workdir, "events.out.tfevents.*"):
        data = storage.read_bytes(path)
        pos = 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((int(event.step), float(v.simple_value)))
    return out


def read_metrics(workdir: str) -> list[dict]:
    path = storage.join(workdir, "metrics.jsonl")
    if not storage.exists(path):
        return []
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]
