"""TFDS builders (optional extra ``tfds``: ``pip install -e ".[tfds]"``; TensorFlow is NOT needed)
for the training QA, VSI-Bench and VSTI-Bench annotations.

Each builder reads a local ``manual_dir`` (annotation ``*.json``/``*.jsonl`` files next to the
videos), validates every record with the same parsers as :mod:`data_pipeline.sources` (bad
records are skipped and logged, never written), and writes ArrayRecord shards. Records store the
video path relative to ``manual_dir`` (one scene video serves dozens of QA records, so videos are
not copied); read back with :func:`tfds_source`, a Grain random-access source yielding the same
record dicts as the JSON sources::

    build("vsibench", manual_dir="/data/vsibench", data_dir="/data/tfds")
    src = tfds_source("vsibench", data_dir="/data/tfds", video_root="/data/vsibench")
    it = make_iterator(src, tokenizer, cfg)

Builder names: ``vlm3r_train_qa``, ``vlm3r_vsi_bench``, ``vlm3r_vsti_bench``.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline.sources import make_source
from vlm3r_jax import storage

log = logging.getLogger(__name__)

_TEXT_FIELDS = ("id", "video", "question_type", "data_source", "scene_name", "answer")


class _QaBuilder(tfds.core.GeneratorBasedBuilder):
    SOURCE_KIND = ""
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the annotation files (*.json or *.jsonl) and the videos they reference in manual_dir; "
        "video paths are resolved relative to manual_dir with the layout of the source kind."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        feats = {k: tfds.features.Text() for k in _TEXT_FIELDS}
        feats["conversations"] = tfds.features.Text()  # JSON list of {"from", "value"}
        feats["options"] = tfds.features.Text()  # JSON list of strings
        feats["line"] = np.int64
        feats["file"] = tfds.features.Text()
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(feats))

    def _split_generators(self, dl_manager: Any) -> dict:
        root = os.fspath(dl_manager.manual_dir)
        files = sorted(glob.glob(os.path.join(root, "*.json")) + glob.glob(os.path.join(root, "*.jsonl")))
        if not files:
            raise FileNotFoundError(f"no *.json / *.jsonl annotation files in manual_dir {root}")
        return {"train" if self.SOURCE_KIND == "llava" else "test": self._generate_examples(files, root)}

    def _generate_examples(self, files: list[str], root: str):
        src = make_source(self.SOURCE_KIND, files, root)
        skipped = 0
        for i in range(len(src)):
            rec = src[i]
            if "error" in rec:
                skipped += 1
                log.warning("tfds build: skipping %s", rec["message"])
                continue
            out = {k: str(rec[k]) for k in _TEXT_FIELDS}
            out["video"] = os.path.relpath(rec["video"], root)
            out["conversations"] = json.dumps(rec["conversations"])
            out["options"] = json.dumps(rec["options"])
            out["line"] = int(rec["line"])
            out["file"] = os.path.basename(rec["file"])
            yield f"{out['file']}:{out['line']}", out
        log.info("tfds build %s: %d records skipped", self.name, skipped)


class Vlm3rTrainQa(_QaBuilder):
    """LLaVA-style training QA (``merged_qa_*_train.json``)."""

    SOURCE_KIND = "llava"


class Vlm3rVsiBench(_QaBuilder):
    """VSI-Bench (``test.jsonl``; videos ``<dataset>/<scene_name>.mp4``)."""

    SOURCE_KIND = "vsibench"


class Vlm3rVstiBench(_QaBuilder):
    """VSTI-Bench (``video_path`` relative to manual_dir)."""

    SOURCE_KIND = "vstibench"


BUILDERS = {"llava": Vlm3rTrainQa, "vsibench": Vlm3rVsiBench, "vstibench": Vlm3rVstiBench}


def build(kind: str, manual_dir: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """Builds (or reuses) the ArrayRecord dataset of ``kind`` from ``manual_dir``."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {sorted(BUILDERS)}")
    b = BUILDERS[kind](data_dir=data_dir, file_format="array_record")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return b


class TfdsSource:
    """Grain random-access source over ``tfds.data_source(...)``; yields the record dicts of
    :mod:`data_pipeline.sources` with ``video`` joined to ``video_root``."""

    def __init__(self, data_source: Any, video_root: str):
        self.ds = data_source
        self.video_root = storage.absolute(video_root)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict:
        r = self.ds[int(index)]
        txt = {k: (v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in r.items()}
        return {
            **{k: txt[k] for k in _TEXT_FIELDS},
            "video": storage.join(self.video_root, txt["video"]),
            "conversations": json.loads(txt["conversations"]),
            "options": json.loads(txt["options"]),
            "file": txt["file"],
            "line": int(txt["line"]),
        }


def tfds_source(kind: str, data_dir: str, video_root: str, split: str | None = None) -> TfdsSource:
    """``tfds.data_source`` of a built dataset wrapped as a :class:`TfdsSource`."""
    name = BUILDERS[kind].name
    split = split or ("train" if kind == "llava" else "test")
    return TfdsSource(tfds.data_source(name, data_dir=data_dir, split=split), video_root)
