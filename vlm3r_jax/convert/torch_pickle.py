"""Pickle-free reader for PyTorch ``torch.save`` files (``.pth``/``.bin``), no torch needed.

A modern ``torch.save`` file is a zip archive: ``<name>/data.pkl`` (the pickled object graph) plus
one raw little-endian buffer per storage (``<name>/data/<key>``). We unpickle ``data.pkl`` with a
restricted :class:`pickle.Unpickler` whose ``find_class`` only knows the handful of callables a
tensor checkpoint needs (tensor/parameter rebuild functions, storage types, ``OrderedDict`` and,
only when explicitly allowed, ``argparse.Namespace``). Any other global - ``os.system``,
``builtins.eval``, ``subprocess.Popen`` ... - is refused with a :class:`CheckpointError` before
anything runs. Tensors come back lazily as :class:`TensorRef` and are materialised as numpy
arrays (bfloat16 through ``ml_dtypes``) on ``get``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import math
import pickle
import zipfile
from collections.abc import Iterable
from typing import Any

import ml_dtypes
import numpy as np

from vlm3r_jax.convert.errors import CheckpointError

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """A tensor in the archive, not yet read: storage + offset/size/stride (in elements)."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return self.storage.dtype


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _StorageRef):
        raise CheckpointError(f"malformed tensor record (storage is {type(storage).__name__})")
    return TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch", "Size"): tuple,
    **{("torch", name): _StorageType(dt) for name, dt in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, path: str, allow_namespace: bool):
        super().__init__(io.BytesIO(data))
        self._path = path
        self._allow_namespace = allow_namespace
        self._storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module, name) == ("argparse", "Namespace"):
            if self._allow_namespace:
                return argparse.Namespace
            raise CheckpointError(
                f"{self._path}: the pickle contains an argparse.Namespace (a released CUT3R .pth stores its "
                "constructor arguments that way); pass allow_namespace=True to read it"
            )
        raise CheckpointError(
            f"{self._path}: refusing to unpickle {module}.{name}: a weights file may only contain tensors, "
            "storages and dicts (this file could execute code when loaded with a plain torch.load). "
            "Do not load it; re-export the weights from a trusted source (e.g. as safetensors)."
        )

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise CheckpointError(f"{self._path}: unsupported persistent id {pid!r} in the pickle")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType):
            raise CheckpointError(f"{self._path}: unsupported storage type {stype!r}")
        key = str(key)
        ref = self._storages.get(key)
        if ref is None:
            ref = self._storages[key] = _StorageRef(key, stype.dtype, int(numel))
        return ref


_WHOLE = object()  # to_numpy's default (None is a legitimate value inside a checkpoint)


def _flatten(obj: Any, prefix: str, out: dict[str, TensorRef]) -> None:
    if isinstance(obj, TensorRef):
        out[prefix[:-1]] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}{k}.", out)


class TorchPickleSource:
    """A :class:`~vlm3r_jax.convert.sources.TensorSource` over a ``torch.save`` zip file.

    Keys are the dotted paths of every tensor in the (possibly nested) dict, e.g. a CUT3R
    ``.pth`` gives ``model.enc_blocks.0.attn.qkv.weight``; a flat state dict gives its own keys.
    ``obj`` is the unpickled object with tensors as :class:`TensorRef` (see :func:`materialize`).
    """

    def __init__(self, path: str, allow_namespace: bool = False):
        self.path = str(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            with open(self.path, "rb") as f:
                head = f.read(8)
            if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
                raise CheckpointError(
                    f"{self.path}: legacy (pre-1.6, non-zip) torch.save format is not supported by the pickle-free "
                    "reader; re-save it with a current torch (torch.save(torch.load(p, weights_only=True), p2))"
                ) from e
            raise CheckpointError(
                f"{self.path}: not a readable torch.save zip archive ({e}); the file is truncated or corrupt - "
                "re-download or re-export it"
            ) from e
        names = self._zip.namelist()
        pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkls:
            raise CheckpointError(f"{self.path}: no '<name>/data.pkl' in the archive; not a torch.save file")
        self._prefix = pkls[0][: -len("data.pkl")]
        self._little = True
        bo = self._prefix + "byteorder"
        try:
            if bo in names:
                self._little = self._zip.read(bo).decode().strip() != "big"
            data = self._zip.read(pkls[0])
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            raise CheckpointError(f"{self.path}: corrupt archive member ({e}); re-download or re-export it") from e
        try:
            self.obj = _RestrictedUnpickler(data, self.path, allow_namespace).load()
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError, KeyError) as e:
            raise CheckpointError(f"{self.path}: corrupt pickle in {pkls[0]} ({type(e).__name__}: {e})") from e
        self._tensors: dict[str, TensorRef] = {}
        _flatten(self.obj, "", self._tensors)
        # a storage read from the archive stays cached only while tensors that view it remain unread,
        # so streaming a multi-GB checkpoint through get() never holds the whole file in memory
        self._cache: dict[str, np.ndarray] = {}
        self._pending: dict[str, int] = collections.Counter(t.storage.key for t in self._tensors.values())

    # --- TensorSource ---------------------------------------------------------------------------
    def keys(self) -> Iterable[str]:
        return self._tensors.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return self._tensors[key].shape

    def dtype(self, key: str) -> np.dtype:
        return self._tensors[key].dtype

    def get(self, key: str) -> np.ndarray:
        t = self._tensors[key]
        arr = self.materialize(t, name=key)
        k = t.storage.key
        self._pending[k] -= 1
        if self._pending[k] <= 0:
            self._cache.pop(k, None)
        return arr

    def where(self, key: str | None = None) -> str:
        return self.path

    # --- reading --------------------------------------------------------------------------------
    def _storage(self, ref: _StorageRef) -> np.ndarray:
        arr = self._cache.get(ref.key)
        if arr is None:
            member = f"{self._prefix}data/{ref.key}"
            try:
                raw = self._zip.read(member)
            except KeyError as e:
                raise CheckpointError(
                    f"{self.path}: storage {member!r} is missing from the archive (truncated?)"
                ) from e
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
                raise CheckpointError(
                    f"{self.path}: cannot read {member!r} ({e}); the file is truncated or corrupt"
                ) from e
            dt = ref.dtype if self._little else ref.dtype.newbyteorder(">")
            need = ref.numel * dt.itemsize
            if len(raw) < need:
                raise CheckpointError(
                    f"{self.path}: storage {member!r} has {len(raw)} bytes, expected {need} (truncated file)"
                )
            arr = np.frombuffer(raw, dtype=dt, count=ref.numel)
            if not self._little:
                arr = arr.astype(ref.dtype)
            self._cache[ref.key] = arr
        return arr

    def materialize(self, t: TensorRef, name: str = "?") -> np.ndarray:
        """A TensorRef -> an owned, contiguous numpy array."""
        st = self._storage(t.storage)
        n = math.prod(t.shape)
        if n == 0:
            return np.zeros(t.shape, t.dtype)
        last = t.offset + sum((s - 1) * d for s, d in zip(t.shape, t.stride))
        if t.offset < 0 or last >= st.size:
            raise CheckpointError(f"{self.path}: tensor {name!r} reaches past its storage (corrupt file)")
        view = np.lib.stride_tricks.as_strided(
            st[t.offset :], shape=t.shape, strides=tuple(s * st.itemsize for s in t.stride), writeable=False
        )
        return np.array(view, copy=True)

    def to_numpy(self, obj: Any = _WHOLE) -> Any:
        """``obj`` (default: the whole file) with every TensorRef replaced by a numpy array."""
        obj = self.obj if obj is _WHOLE else obj
        if isinstance(obj, TensorRef):
            return self.materialize(obj)
        if isinstance(obj, collections.OrderedDict):
            return collections.OrderedDict((k, self.to_numpy(v)) for k, v in obj.items())
        if isinstance(obj, dict):
            return {k: self.to_numpy(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.to_numpy(v) for v in obj)
        if isinstance(obj, argparse.Namespace):
            return argparse.Namespace(**{k: self.to_numpy(v) for k, v in vars(obj).items()})
        return obj


def load_torch_pickle(path: str, allow_namespace: bool = False) -> Any:
    """The raw object of a ``torch.save`` file with tensors as numpy arrays, without executing
    pickle code (see :class:`TorchPickleSource`)."""
    return TorchPickleSource(path, allow_namespace=allow_namespace).to_numpy()


def load_with_torch(path: str, allow_namespace: bool = False) -> Any:
    """Same as :func:`load_torch_pickle` through ``torch.load(weights_only=True)`` (torch required),
    allowing exactly ``argparse.Namespace`` beyond torch's own safe set when asked."""
    import torch

    extra = [argparse.Namespace] if allow_namespace else []
    try:
        with torch.serialization.safe_globals(extra):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: torch.load(weights_only=True) refused the file: {e}") from e

    def conv(o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            if t.dtype == torch.bfloat16:
                return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
            return t.numpy().copy()
        if isinstance(o, collections.OrderedDict):
            return collections.OrderedDict((k, conv(v)) for k, v in o.items())
        if isinstance(o, dict):
            return {k: conv(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return type(o)(conv(v) for v in o)
        if isinstance(o, argparse.Namespace):
            return argparse.Namespace(**{k: conv(v) for k, v in vars(o).items()})
        return o

    return conv(obj)
