"""Writer for PyTorch's ``torch.save`` zip format without torch (the inverse of :mod:`torch_pickle`).

The archive is what ``torch.save(obj, path)`` (torch >= 1.6, protocol 2) produces::

    <name>/data.pkl                 the pickled object graph; tensors as
                                    torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
                                    False, OrderedDict()) with the storage a persistent id
                                    ("storage", torch.<Dtype>Storage, "<key>", "cpu", numel)
    <name>/.format_version, .storage_alignment, byteorder
    <name>/data/<key>               one raw little-endian buffer per tensor, 64-byte aligned
    <name>/version, .data/serialization_id

so ``torch.load(path, weights_only=True)`` and our pickle-free reader both read it. Only the
globals those readers allow are emitted (the rebuild function, storage types, ``OrderedDict`` and,
for a CUT3R ``.pth``, ``argparse.Namespace``). Values may be dicts, OrderedDicts, lists, tuples,
strings, numbers, bools, None, numpy arrays (bfloat16 through ``ml_dtypes``) and
``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

_STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}
_ALIGN = 64  # torch's PyTorchStreamWriter aligns every record to 64 bytes (needed for mmap loads)


class _Global:
    """A reference to ``module.name`` written as a GLOBAL opcode without importing it."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *a: Any) -> Any:  # pickle's save_reduce requires a callable
        raise RuntimeError("placeholder")


class _Storage:
    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _Tensor:
    def __init__(self, storage: _Storage, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape


class _Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, f: io.BytesIO):
        super().__init__(f, protocol=2)
        self._globals: dict[tuple[str, str], _Global] = {}

    def glob(self, module: str, name: str) -> _Global:
        return self._globals.setdefault((module, name), _Global(module, name))

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            return ("storage", self.glob("torch", _STORAGE_NAMES[obj.dtype]), obj.key, "cpu", obj.numel)
        return None

    def _save_global(self, obj: _Global) -> None:
        if id(obj) in self.memo:
            self.write(self.get(self.memo[id(obj)][0]))
            return
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    def _save_tensor(self, obj: _Tensor) -> None:
        stride, acc = [], 1
        for s in reversed(obj.shape):
            stride.append(acc)
            acc *= s
        args = (obj.storage, 0, tuple(obj.shape), tuple(reversed(stride)), False, collections.OrderedDict())
        self.save_reduce(self.glob("torch._utils", "_rebuild_tensor_v2"), args, obj=obj)

    def _save_namespace(self, obj: argparse.Namespace) -> None:
        # what pickle protocol 2 emits for it: GLOBAL argparse Namespace, (), NEWOBJ, {...}, BUILD
        self._save_global(self.glob("argparse", "Namespace"))
        self.save(())
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        self.save(dict(vars(obj)))
        self.write(pickle.BUILD)

    def _save_ordered_dict(self, obj: collections.OrderedDict) -> None:
        self.save_reduce(self.glob("collections", "OrderedDict"), (), obj=obj, dictitems=iter(obj.items()))


_Pickler.dispatch[_Global] = _Pickler._save_global
_Pickler.dispatch[_Tensor] = _Pickler._save_tensor
_Pickler.dispatch[argparse.Namespace] = _Pickler._save_namespace
_Pickler.dispatch[collections.OrderedDict] = _Pickler._save_ordered_dict


def _convert(obj: Any, buffers: list[np.ndarray], where: str) -> Any:
    """Replaces every numpy array by a :class:`_Tensor` over a new storage (one per tensor)."""
    if isinstance(obj, (np.ndarray, np.generic)):
        arr = np.asarray(obj)  # not ascontiguousarray: it turns 0-d arrays into 1-d ones
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")
        if arr.dtype.newbyteorder("=") not in _STORAGE_NAMES:
            raise TypeError(f"{where}: dtype {arr.dtype} has no torch storage type; supported: "
                            f"{sorted(str(d) for d in _STORAGE_NAMES)}")
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if np.little_endian is False:  # the archive's byteorder record says little
            arr = arr.byteswap()
        st = _Storage(str(len(buffers)), arr.dtype, arr.size)
        buffers.append(arr)
        return _Tensor(st, tuple(int(s) for s in arr.shape))
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _convert(v, buffers, f"{where}.{k}")) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _convert(v, buffers, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_convert(v, buffers, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, argparse.Namespace):
        return argparse.Namespace(**{k: _convert(v, buffers, f"{where}.{k}") for k, v in vars(obj).items()})
    if obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return obj
    if hasattr(obj, "__array__"):  # jax arrays
        return _convert(np.asarray(obj), buffers, where)
    raise TypeError(f"{where}: cannot write a {type(obj).__name__} into a torch checkpoint")


def _aligned_entry(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    """Stores ``data`` uncompressed with its first byte at a multiple of 64 in the file (a padding
    extra field in the local header, as torch's writer does)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o600 << 16
    start = zf.start_dir + 30 + len(name.encode("utf-8"))
    pad = (-(start + 4)) % _ALIGN
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    zf.writestr(info, data)


def save_torch(path: str, obj: Any, *, archive_name: str | None = None) -> None:
    """Writes ``obj`` (nested containers of numpy arrays) as a ``torch.save`` zip file at ``path``;
    written to ``path + '.tmp'`` and renamed, so a crash never leaves a half-written file."""
    buffers: list[np.ndarray] = []
    tree = _convert(obj, buffers, os.path.basename(path))
    f = io.BytesIO()
    _Pickler(f).dump(tree)
    name = archive_name or os.path.splitext(os.path.basename(path))[0] or "archive"
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        _aligned_entry(zf, f"{name}/data.pkl", f.getvalue())
        _aligned_entry(zf, f"{name}/.format_version", b"1")
        _aligned_entry(zf, f"{name}/.storage_alignment", str(_ALIGN).encode())
        _aligned_entry(zf, f"{name}/byteorder", b"little")
        for i, arr in enumerate(buffers):
            _aligned_entry(zf, f"{name}/data/{i}", arr.tobytes())
        _aligned_entry(zf, f"{name}/version", b"3\n")
        _aligned_entry(zf, f"{name}/.data/serialization_id", b"0" * 40)
    os.replace(tmp, path)
