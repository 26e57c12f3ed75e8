"""A small reader for benchmark directories in the official layouts.

* VSI-Bench (HF ``nyu-visionx/VSI-Bench``): records with ``id, dataset, scene_name, question_type,
  question, options, ground_truth``; videos at ``<root>/<dataset>/<scene_name>.mp4``.
* VSTI-Bench (HF ``Journey9ni/vstibench``): records with ``video_path`` (relative to ``<root>``),
  ``question_type, question, options, ground_truth, mc_answer`` (``id`` optional).

Records files: ``.jsonl``, ``.json`` (a list, or a dict holding one under ``data``/``test``) or
``.parquet`` (needs pyarrow). A record that cannot be scored as given (bad JSON line, unknown
question_type, missing field) is NOT dropped: it comes back with ``_malformed`` set to the reason,
and the runner counts it as a failure.

:class:`BenchmarkRecords` is the Grain random-access source (``__len__`` + ``__getitem__``) of a
benchmark directory: JSONL files are indexed by line offsets with the reader of the training
sources (:mod:`data_pipeline.sources`), so a record is parsed only when it is read (also inside
Grain worker processes). :func:`load_records` is the list of all its records.

The directory may be a URI (``gs://bucket/VSI-Bench``): the records file is read through
:mod:`vlm3r_jax.storage`, and video paths stay under the root URI.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from typing import Any

from data_pipeline.sources import _JsonRecords, path_under_root
from vlm3r_jax import storage
from vlm3r_jax.eval import tasks

RECORD_FILE_CANDIDATES = ("test.jsonl", "test.json", "{benchmark}.jsonl", "{benchmark}.json",
                          "{benchmark}_test.jsonl", "test*.parquet")  # {benchmark}_test.jsonl: make_dataset's name


def find_records_file(root: str, benchmark: str) -> str:
    """The records file of a benchmark directory (first of RECORD_FILE_CANDIDATES, else the only
    .jsonl/.json/.parquet at the top level)."""
    for pattern in RECORD_FILE_CANDIDATES:
        hits = storage.glob(root, pattern.format(benchmark=benchmark))
        if hits:
            return hits[0]
    hits = sorted(p for ext in ("jsonl", "json", "parquet") for p in storage.glob(root, f"*.{ext}"))
    if len(hits) == 1:
        return hits[0]
    raise FileNotFoundError(
        f"no records file found in {root!r} (looked for {RECORD_FILE_CANDIDATES} and a single *.jsonl/*.json/*.parquet; "
        f"found {hits}); pass it explicitly (config.records)"
    )


def read_records_file(path: str) -> list[dict[str, Any]]:
    """Raw records of a .jsonl/.json/.parquet file. Undecodable JSONL lines become
    ``{"_malformed": "line N: invalid JSON ..."}`` entries instead of aborting."""
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow), or convert it to .jsonl") from e
        with storage.open_read(path) as f:
            return pq.read_table(f).to_pylist()
    with io.TextIOWrapper(storage.open_read(path), encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            out = []
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    out.append({"_malformed": f"{os.path.basename(path)} line {n}: invalid JSON ({e.msg})"})
                    continue
                out.append(rec if isinstance(rec, dict) else {"_malformed": f"line {n}: not a JSON object"})
            return out
        data = json.load(f)
    if isinstance(data, Mapping):
        for key in ("data", "test"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records (or a dict with a 'data'/'test' list)")
    return [r if isinstance(r, dict) else {"_malformed": f"entry {i}: not a JSON object"} for i, r in enumerate(data)]


def video_path_of(record: Mapping[str, Any], root: str, benchmark: str) -> str | None:
    """Absolute video path of a record in the official layout, or None when the fields are missing
    or name a file outside ``root`` (see :func:`data_pipeline.sources.path_under_root`)."""
    if benchmark == "vstibench" and record.get("video_path"):
        return path_under_root(root, str(record["video_path"]))
    if record.get("dataset") and record.get("scene_name"):
        return path_under_root(root, os.path.join(str(record["dataset"]), f"{record['scene_name']}.mp4"))
    if record.get("video_path"):
        return path_under_root(root, str(record["video_path"]))
    return None


def validate(record: Mapping[str, Any], benchmark: str) -> str | None:
    """Why ``record`` cannot be scored as given, or None when it can."""
    if record.get("_malformed"):
        return str(record["_malformed"])
    qt = record.get("question_type")
    try:
        mc = tasks.is_multiple_choice(qt, benchmark)
    except ValueError:
        return f"unknown question_type {qt!r}"
    if not isinstance(record.get("question"), str):
        return "missing 'question'"
    if record.get("ground_truth") is None:
        return "missing 'ground_truth'"
    if mc:
        opts = record.get("options")
        if not isinstance(opts, (list, tuple)) or not opts or not all(isinstance(o, str) for o in opts):
            return "multiple-choice record without a list of string 'options'"
        if benchmark == "vstibench" and not record.get("mc_answer"):
            return "multiple-choice record without 'mc_answer'"
    return None


def normalize(raw: Mapping[str, Any], index: int, root: str, benchmark: str) -> dict[str, Any]:
    """One record with a string ``id`` (the index when absent), absolute ``video_path`` and
    ``_malformed`` (None when valid)."""
    rec = dict(raw)
    rec["id"] = str(raw["id"]) if raw.get("id") is not None else f"idx-{index}"
    rec["video_path"] = video_path_of(raw, root, benchmark)
    reason = validate(raw, benchmark)
    named = raw.get("video_path") or (raw.get("dataset") and raw.get("scene_name"))
    if rec["video_path"] is None and named:
        reason = f"the video path leaves the benchmark directory {root}; records may only name files under it"
    elif reason is None and rec["video_path"] is None:
        reason = "no video fields (dataset + scene_name, or video_path)"
    rec["_malformed"] = reason
    return rec


class BenchmarkRecords:
    """Grain random-access source of the normalized records of a benchmark directory
    (``grain.MapDataset.source(BenchmarkRecords(root))``). Item ``i`` is :func:`normalize` of the
    ``i``-th non-blank record of the records file; an undecodable JSONL line (bad JSON or non-UTF-8
    bytes) is an item with ``_malformed`` naming the file and line. ``limit`` > 0 keeps the first
    ``limit`` records. Picklable (Grain workers re-open the file)."""

    def __init__(self, root: str, benchmark: str = "vsibench", records_file: str | None = None, limit: int = 0):
        self.benchmark = tasks.check_benchmark(benchmark)
        if not storage.isdir(root):
            raise FileNotFoundError(f"benchmark directory {root!r} does not exist (config.data_root)")
        path = records_file or find_records_file(root, benchmark)
        if not os.path.isabs(path) and not storage.is_uri(path) and not os.path.exists(path):
            path = storage.join(root, path)
        if not storage.exists(path):
            raise FileNotFoundError(f"records file {path!r} does not exist (config.records)")
        self.root, self.path = root, path
        self._lines: _JsonRecords | None = None
        self._items: list[dict[str, Any]] | None = None
        if path.endswith(".jsonl"):
            self._lines = _JsonRecords(path)  # byte offsets only; lines are parsed on access
            n = len(self._lines)
        else:  # a JSON list/dict or parquet is read whole anyway
            self._items = read_records_file(path)
            n = len(self._items)
        self._n = min(n, limit) if limit > 0 else n

    def __len__(self) -> int:
        return self._n

    def raw(self, index: int) -> dict[str, Any]:
        """The record as stored (or a ``_malformed`` stub for an undecodable line)."""
        if not 0 <= index < self._n:
            raise IndexError(f"record {index} out of range 0..{self._n - 1} of {self.path}")
        if self._items is not None:
            return self._items[index]
        item, line, err = self._lines.get(index)
        name = os.path.basename(self.path)
        if err == "bad_json":
            return {"_malformed": f"{name} line {line}: invalid JSON ({item})"}
        if err is not None:
            return {"_malformed": f"{name} line {line}: {err} ({item})"}
        return item if isinstance(item, dict) else {"_malformed": f"{name} line {line}: not a JSON object"}

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        return normalize(self.raw(index), index, self.root, self.benchmark)


def load_records(
    root: str, benchmark: str = "vsibench", records_file: str | None = None, limit: int = 0
) -> list[dict[str, Any]]:
    """Normalized records of a benchmark directory (all items of :class:`BenchmarkRecords`).
    ``limit`` > 0 keeps the first ``limit`` records (debug runs). Raises ValueError on duplicate
    ids: resuming keys on them."""
    source = BenchmarkRecords(root, benchmark, records_file, limit)
    path = source.path
    recs = [source[i] for i in range(len(source))]
    seen: dict[str, int] = {}
    for i, r in enumerate(recs):
        if r["id"] in seen:
            raise ValueError(f"{path}: records {seen[r['id']]} and {i} share id {r['id']!r}; ids must be unique")
        seen[r["id"]] = i
    return recs
