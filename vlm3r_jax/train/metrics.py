"""Metric writers: clu's (TensorBoard + console) when its TensorFlow dependency is installed,
otherwise console + ``metrics.jsonl``. The JSONL file is always written, so loss curves can be
plotted without TensorBoard (the demo does this)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

log = logging.getLogger("vlm3r_jax.train")


class JsonlWriter:
    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        row = {"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


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


def create_writer(workdir: str, *, tensorboard: bool = True) -> MultiWriter:
    writers: list[Any] = [JsonlWriter(os.path.join(workdir, "metrics.jsonl"))]
    if tensorboard:
        try:
            from clu import metric_writers  # needs tensorflow for its summary writer

            writers.append(metric_writers.create_default_writer(workdir))
            return MultiWriter(writers)
        except ImportError:
            log.info("TensorBoard writer unavailable (pip install -e '.[tensorboard]'); logging to console")
    writers.append(ConsoleWriter())
    return MultiWriter(writers)


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
