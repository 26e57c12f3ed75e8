"""Pure-numpy safetensors reader (memory-mapped, lazy, bf16-aware) and writer.

Reading through ``np.memmap`` means a tensor is only paged in when it is converted
and placed on device, so a 7B bf16 checkpoint never exists twice in host RAM.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Mapping

import ml_dtypes
import numpy as np

from vlm3r_jax.convert.errors import CheckpointError
from vlm3r_jax.convert.json_config import read_json_object

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_entries(path: str, header: dict, data_bytes: int) -> None:
    """Every entry must describe exactly its own bytes inside the data section: otherwise header
    bytes or another tensor's bytes would load silently as weights."""
    spans = []
    for key, e in header.items():
        where = f"{path}: tensor {key!r}"
        if not isinstance(e, dict):
            raise CheckpointError(f"{where}: header entry is a {type(e).__name__}, not an object (corrupt header)")
        if e.get("dtype") not in _DTYPES:
            raise CheckpointError(f"{where} has unsupported dtype {e.get('dtype')!r}")
        shape, offs = e.get("shape"), e.get("data_offsets")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise CheckpointError(f"{where}: shape {shape!r} is not a list of non-negative ints (corrupt header)")
        if not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) and o >= 0 for o in offs):
            raise CheckpointError(f"{where}: data_offsets {offs!r} is not [begin, end] in non-negative ints "
                                  "(corrupt header)")
        begin, end = offs
        need = math.prod(shape) * _DTYPES[e["dtype"]].itemsize
        if end - begin != need:
            raise CheckpointError(f"{where}: data_offsets span {end - begin} bytes but shape {shape} of "
                                  f"{e['dtype']} needs {need} (corrupt header)")
        if end > data_bytes:
            raise CheckpointError(f"{where} extends past the end of the file (truncated download?)")
        spans.append((begin, end, key))
    reach, last = 0, None
    for begin, end, key in sorted(spans):
        if begin < end and begin < reach:
            raise CheckpointError(f"{path}: tensors {last!r} and {key!r} share bytes (overlapping data_offsets; "
                                  "corrupt header)")
        if end > reach:
            reach, last = end, key


class SafetensorsFile:
    """One ``.safetensors`` file: header parsed eagerly, data mapped lazily."""

    def __init__(self, path: str):
        self.path = path
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                raw = f.read(8)
                if len(raw) < 8:
                    raise CheckpointError(f"{path}: file is truncated (no safetensors header); re-download or re-export it")
                (n,) = struct.unpack("<Q", raw)
                if n > size - 8 or n > 100_000_000:
                    raise CheckpointError(f"{path}: corrupt safetensors header (length {n} > file size {size})")
                header = json.loads(f.read(n))
        except FileNotFoundError:
            raise
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from e
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
        self.metadata = header.pop("__metadata__", {}) or {}
        self._data_start = 8 + n
        self._entries = header
        self._size = size
        _check_entries(path, header, size - self._data_start)
        self._mm: np.memmap | None = None

    def keys(self) -> Iterable[str]:
        return self._entries.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key]["shape"])

    def dtype(self, key: str) -> np.dtype:
        return _DTYPES[self._entries[key]["dtype"]]

    def get(self, key: str) -> np.ndarray:
        e = self._entries[key]
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        start, end = e["data_offsets"]
        buf = self._mm[self._data_start + start : self._data_start + end]
        return buf.view(_DTYPES[e["dtype"]]).reshape(e["shape"])


class SafetensorsDir:
    """A TensorSource over an HF checkpoint directory (or a single ``.safetensors`` file).

    Understands sharded ``model-0000x-of-0000y.safetensors`` with ``model.safetensors.index.json``,
    else ``model.safetensors`` alone, else any other set of ``*.safetensors`` files.
    """

    def __init__(self, path: str):
        self.root = path
        if os.path.isfile(path):
            files = [path]
        elif os.path.isdir(path):
            index = os.path.join(path, "model.safetensors.index.json")
            if os.path.exists(index):
                weight_map = read_json_object(index).get("weight_map", {})
                files = sorted({os.path.join(path, v) for v in weight_map.values()})
                missing = [p for p in files if not os.path.exists(p)]
                if missing:
                    raise FileNotFoundError(
                        f"{index} lists shard(s) that are not in {path}: "
                        f"{[os.path.basename(m) for m in missing]}; download the complete checkpoint"
                    )
            elif os.path.exists(os.path.join(path, "model.safetensors")):
                # as transformers: other *.safetensors next to it (e.g. an adapter) are not the model
                files = [os.path.join(path, "model.safetensors")]
            else:
                files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
            if not files:
                raise FileNotFoundError(
                    f"no *.safetensors weights in {path}; expected model.safetensors or sharded "
                    "model-0000x-of-0000y.safetensors with model.safetensors.index.json"
                )
        else:
            raise FileNotFoundError(f"checkpoint path does not exist: {path}")
        self.files = [SafetensorsFile(p) for p in files]
        self._where: dict[str, SafetensorsFile] = {}
        for f in self.files:
            for k in f.keys():
                if k in self._where:
                    raise CheckpointError(
                        f"tensor {k!r} appears in both {self._where[k].path} and {f.path}"
                    )
                self._where[k] = f

    def keys(self) -> Iterable[str]:
        return self._where.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return self._where[key].shape(key)

    def dtype(self, key: str) -> np.dtype:
        return self._where[key].dtype(key)

    def get(self, key: str) -> np.ndarray:
        return self._where[key].get(key)

    def where(self, key: str | None = None) -> str:
        if key is not None and key in self._where:
            return self._where[key].path
        return self.root


def save_safetensors(
    path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
    """Writes ``tensors`` (numpy or jax arrays, any supported dtype incl. bfloat16) to ``path``.

    The file is written to a temporary name and renamed, so a crash never leaves a
    half-written checkpoint under the final name.
    """
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    arrays = []
    offset = 0
    for key in sorted(tensors):
        arr = np.asarray(tensors[key])
        arr = np.ascontiguousarray(arr).reshape(arr.shape)  # ascontiguousarray makes a scalar 1-d
        if arr.dtype not in _NAMES:
            raise ValueError(f"cannot save tensor {key!r} of dtype {arr.dtype} to safetensors")
        nbytes = arr.nbytes
        header[key] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
        arrays.append(arr)
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * ((8 - len(blob) % 8) % 8)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(arr.tobytes())
    os.replace(tmp, path)
