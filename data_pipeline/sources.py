"""Random-access record sources (Grain ``RandomAccessDataSource`` protocol: ``__len__`` +
``__getitem__``) for the three layouts VLM-3R uses.

* :class:`LlavaJsonSource` - LLaVA-Video / VLM-3R training JSON (a list) or JSONL. Official record
  (``vlm_3r_data_process/src/format_qa.py``): ``{"id", "data_source", "scene_name",
  "question_type", "video", "conversations": [{"from": "human", "value": "<image>\\n..."},
  {"from": "gpt", "value": "..."}, ...]}``; ``video`` is relative to the video root.
* :class:`VsiBenchSource` - VSI-Bench ``test.jsonl`` (``id, dataset, scene_name, question_type,
  question, options, ground_truth``); video at ``<root>/<dataset>/<scene_name>.mp4``.
* :class:`VstiBenchSource` - VSTI-Bench (``Journey9ni/vstibench``; the official task reads
  ``video_path`` relative to the dataset dir, ``question_type, question, options, ground_truth,
  mc_answer``); MC answers are scored against ``mc_answer``.

Every source returns one normalised record dict::

    {"id", "video" (absolute path, or a URI under a URI root), "conversations" (human/gpt turns, the last gpt turn is the
     answer), "question_type", "data_source", "scene_name", "answer", "options", "file", "line"}

Bad records never raise in the default mode: ``__getitem__`` returns ``{"error": kind,
"message": ..., "file", "line", "id"}`` and the pipeline skips and counts it. With
``strict=True`` a :class:`BadRecordError` naming the file and line is raised instead.
Kinds: ``bad_json`` (unparsable line), ``bad_encoding`` (non-UTF-8), ``bad_schema`` (missing or
mistyped field), ``missing_placeholder`` (first human turn without ``<image>``).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipeline.tokenizer import IMAGE_TOKEN
from vlm3r_jax import storage

# thinking-in-space lmms_eval task lists (vsibench/utils.py, vstibench/utils.py).
VSI_MC_TYPES = (
    "object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard",
    "object_rel_distance", "route_planning", "obj_appearance_order",
)
VSI_NA_TYPES = ("object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation")
VSTI_MC_TYPES = (
    "obj_obj_relative_pos_nf", "obj_obj_relative_pos_ud", "obj_obj_relative_pos_lr",
    "camera_obj_rel_dist_v1", "camera_obj_rel_dist_v2", "camera_obj_rel_dist_v3", "camera_movement_direction",
)
VSTI_NA_TYPES = ("camera_obj_abs_dist", "camera_displacement", "camera_obj_dist_change")
PRE_PROMPT = "These are frames of a video."
NA_POST_PROMPT = "Please answer the question using a single word or phrase."
MC_POST_PROMPT = "Answer with the option's letter from the given choices directly."


class BadRecordError(ValueError):
    """Raised in strict mode; ``kind`` is the bad-input category."""

    def __init__(self, file: str, line: int, kind: str, message: str):
        super().__init__(f"{file}:{line}: {kind}: {message}")
        self.file, self.line, self.kind, self.message = file, line, kind, message

    def __reduce__(self):  # crosses process boundaries (Grain workers) intact
        return (type(self), (self.file, self.line, self.kind, self.message))


def path_under_root(root: str, rel: str) -> str | None:
    """``root/rel`` normalised, or None when ``rel`` is absolute or climbs out of ``root`` with
    ``..``: an annotation file may only name videos inside its dataset (a record's
    ``../../../../etc/passwd`` must not be opened). The check is on the path as written;
    symlinks inside the dataset are the dataset owner's choice and are followed. ``root`` may be
    a URI (``gs://bucket/data``): ``rel`` then stays under that prefix of that bucket."""
    if not rel or os.path.isabs(rel) or storage.is_uri(rel) or "\0" in rel:
        return None
    root = storage.normpath(storage.absolute(root))
    full = storage.normpath(storage.join(root, rel))
    sep = "/" if storage.is_uri(root) else os.sep
    return full if full == root or full.startswith(root.rstrip(sep) + sep) else None


def is_error(record: dict) -> bool:
    return "error" in record


def benchmark_prompt(question: str, options: Sequence[str] | None, multiple_choice: bool) -> str:
    """The official ``vsibench_doc_to_text`` (identical in the training data's human turn)."""
    if multiple_choice:
        return "\n".join([PRE_PROMPT, question, "Options:\n" + "\n".join(options or []), MC_POST_PROMPT])
    return f"{PRE_PROMPT}\n{question}\n{NA_POST_PROMPT}"


class _LineFile:
    """Byte offsets of the non-blank lines of a text file (JSONL), read lazily per record. A URI's
    file is held in memory instead (a ranged read per record would be one request each), and
    travels to Grain workers with the source."""

    def __init__(self, path: str):
        self.path = storage.absolute(path)
        self.data = storage.read_bytes(self.path) if storage.is_uri(self.path) else None
        starts, lines = [], []
        with io.BytesIO(self.data) if self.data is not None else open(self.path, "rb") as f:
            pos = 0
            for n, raw in enumerate(f, start=1):
                if raw.strip():
                    starts.append(pos)
                    lines.append(n)
                pos += len(raw)
        self.starts = np.asarray(starts, np.int64)
        self.lines = np.asarray(lines, np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def read(self, i: int) -> bytes:
        with io.BytesIO(self.data) if self.data is not None else open(self.path, "rb") as f:
            f.seek(int(self.starts[i]))
            return f.readline()


class _JsonRecords:
    """A JSON list or a JSONL file as (raw record | bytes, line) pairs."""

    def __init__(self, path: str):
        self.path = storage.absolute(path)
        if not storage.exists(self.path):
            raise FileNotFoundError(f"annotation file {self.path} does not exist ({storage.why_missing(self.path)})")
        with storage.open_read(self.path) as f:
            head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()  # editors on Windows write a BOM
        self.jsonl = not head.startswith(b"[")
        if self.jsonl:
            self.lines = _LineFile(self.path)
            self.items = None
            if head.startswith(b"{") and len(self.lines) > 1 and self.get(0)[2] == "bad_json":
                self._refuse_single_object()
        else:
            try:
                items = json.loads(storage.read_bytes(self.path).decode("utf-8-sig"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                # A broken JSON *list* has no per-record boundary to skip to.
                raise ValueError(
                    f"{self.path}: not a valid JSON list ({e}); fix the file or convert it to JSONL "
                    "(one record per line) so bad records can be skipped one by one"
                ) from e
            self.items = items

    def _refuse_single_object(self) -> None:
        """A pretty-printed JSON object would otherwise become one bad record per line."""
        try:
            whole = json.loads((self.lines.data or storage.read_bytes(self.path)).decode("utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return  # a JSONL file whose first record is broken: skipped record by record
        raise ValueError(f"{self.path} holds one JSON {type(whole).__name__}, not records: expected a JSON list "
                         "of records, or JSONL (one record per line)")

    def __len__(self) -> int:
        return len(self.lines) if self.jsonl else len(self.items)

    def get(self, i: int) -> tuple[Any, int, str | None]:
        """(parsed record, line or record number, error kind or None)."""
        if not self.jsonl:
            return self.items[i], i + 1, None
        line = int(self.lines.lines[i])
        raw = self.lines.read(i)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            return f"non-UTF-8 bytes at offset {e.start}", line, "bad_encoding"
        try:
            return json.loads(text), line, None
        except json.JSONDecodeError as e:
            return f"unparsable JSON ({e.msg} at column {e.colno})", line, "bad_json"


class _Source:
    """Shared machinery: concatenated files, error records, strict mode."""

    def __init__(self, paths: str | Sequence[str], video_root: str, strict: bool = False):
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not paths:
            raise ValueError("no annotation files given")
        self.files = [_JsonRecords(os.fspath(p)) for p in paths]
        self.offsets = np.cumsum([0] + [len(f) for f in self.files])
        self.video_root = storage.absolute(video_root)
        self.strict = strict

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range 0..{len(self) - 1}")
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        f = self.files[k]
        item, line, err = f.get(index - int(self.offsets[k]))
        try:
            if err is not None:
                raise BadRecordError(f.path, line, err, item)
            if not isinstance(item, dict):
                raise BadRecordError(f.path, line, "bad_schema", f"record is a {type(item).__name__}, not an object")
            rec = self.convert(item, f.path, line)
            rec.update(file=f.path, line=line)
            return rec
        except BadRecordError as e:
            if self.strict:
                raise
            rid = item.get("id") if isinstance(item, dict) else None
            return {"error": e.kind, "message": str(e), "file": f.path, "line": line, "id": str(rid or "")}

    def convert(self, item: dict, file: str, line: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _inside(self, rel: str, file: str, line: int) -> str:
        path = path_under_root(self.video_root, rel)
        if path is None:
            raise BadRecordError(file, line, "bad_path", f"video path {rel!r} is not inside the video root "
                                 f"{self.video_root}; records may only name files under it")
        return path

    @staticmethod
    def _field(item: dict, name: str, typ: type | tuple, file: str, line: int) -> Any:
        if name not in item:
            raise BadRecordError(file, line, "bad_schema", f"missing field {name!r} (has {sorted(item)})")
        v = item[name]
        if not isinstance(v, typ):
            raise BadRecordError(file, line, "bad_schema", f"field {name!r} has type {type(v).__name__}")
        return v


class LlavaJsonSource(_Source):
    """LLaVA-style instruction data (JSON list or JSONL; one or more files, one video root)."""

    def convert(self, item: dict, file: str, line: int) -> dict:
        video = self._field(item, "video", str, file, line)
        conv = self._field(item, "conversations", list, file, line)
        if not conv:
            raise BadRecordError(file, line, "bad_schema", "empty conversations")
        for j, t in enumerate(conv):
            if not isinstance(t, dict) or t.get("from") not in ("human", "gpt") or not isinstance(t.get("value"), str):
                raise BadRecordError(file, line, "bad_schema", f"turn {j} is not {{'from': human|gpt, 'value': str}}")
        humans = [t for t in conv if t["from"] == "human"]
        if not humans or IMAGE_TOKEN not in humans[0]["value"]:
            raise BadRecordError(file, line, "missing_placeholder", "the first human turn has no '<image>' placeholder")
        answer = conv[-1]["value"] if conv[-1]["from"] == "gpt" else ""
        return {
            "id": str(item.get("id", f"{os.path.basename(file)}:{line}")),
            "video": self._inside(video, file, line),
            "conversations": [{"from": t["from"], "value": t["value"]} for t in conv],
            "question_type": str(item.get("question_type", "")),
            "data_source": str(item.get("data_source", item.get("dataset", ""))),
            "scene_name": str(item.get("scene_name", "")),
            "answer": answer,
            "options": list(item.get("options") or []),
        }


class _BenchSource(_Source):
    mc_types: tuple[str, ...] = ()
    na_types: tuple[str, ...] = ()

    def video_path(self, item: dict, file: str, line: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def mc_answer(self, item: dict) -> Any:
        return item.get("ground_truth")

    def convert(self, item: dict, file: str, line: int) -> dict:
        qtype = self._field(item, "question_type", str, file, line)
        question = self._field(item, "question", str, file, line)
        options = item.get("options") or []
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise BadRecordError(file, line, "bad_schema", "field 'options' must be a list of strings")
        if qtype in self.mc_types:
            mc = True
        elif qtype in self.na_types:
            mc = False
        else:  # unknown type: decide by the presence of options (documented fallback)
            mc = bool(options)
        answer = self.mc_answer(item) if mc else item.get("ground_truth")
        if answer is None:
            raise BadRecordError(file, line, "bad_schema", "missing field 'ground_truth'")
        prompt = f"{IMAGE_TOKEN}\n" + benchmark_prompt(question, options, mc)
        return {
            "id": str(item.get("id", f"{os.path.basename(file)}:{line}")),
            "video": self.video_path(item, file, line),
            "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": str(answer)}],
            "question_type": qtype,
            "data_source": str(item.get("dataset", item.get("data_source", ""))),
            "scene_name": str(item.get("scene_name", "")),
            "answer": str(answer),
            "options": list(options),
        }


class VsiBenchSource(_BenchSource):
    """VSI-Bench records; video at ``<video_root>/<dataset>/<scene_name>.mp4``."""

    mc_types, na_types = VSI_MC_TYPES, VSI_NA_TYPES

    def video_path(self, item: dict, file: str, line: int) -> str:
        ds = self._field(item, "dataset", str, file, line)
        scene = self._field(item, "scene_name", str, file, line)
        return self._inside(os.path.join(ds, f"{scene}.mp4"), file, line)


class VstiBenchSource(_BenchSource):
    """VSTI-Bench records; ``video_path`` relative to ``video_root`` (else the VSI layout)."""

    mc_types, na_types = VSTI_MC_TYPES, VSTI_NA_TYPES

    def mc_answer(self, item: dict) -> Any:
        return item.get("mc_answer", item.get("ground_truth"))

    def video_path(self, item: dict, file: str, line: int) -> str:
        if isinstance(item.get("video_path"), str):
            return self._inside(item["video_path"], file, line)
        ds = self._field(item, "dataset", str, file, line)
        scene = self._field(item, "scene_name", str, file, line)
        return self._inside(os.path.join(ds, f"{scene}.mp4"), file, line)


SOURCES = {"llava": LlavaJsonSource, "vsibench": VsiBenchSource, "vstibench": VstiBenchSource}


def make_source(kind: str, paths: str | Sequence[str], video_root: str, strict: bool = False) -> _Source:
    """``kind``: ``llava`` | ``vsibench`` | ``vstibench``."""
    if kind not in SOURCES:
        raise ValueError(f"unknown source kind {kind!r}; choose one of {sorted(SOURCES)}")
    return SOURCES[kind](paths, video_root, strict=strict)
