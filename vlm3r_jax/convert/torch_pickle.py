"""Pickle-free reader for PyTorch ``torch.save`` files (``.pth``/``.bin``), no torch needed.

A modern ``torch.save`` file is a zip archive: ``<name>/data.pkl`` (the pickled object graph) plus
one raw little-endian buffer per storage (``<name>/data/<key>``). We unpickle ``data.pkl`` with a
restricted :class:`pickle.Unpickler` whose ``find_class`` only knows the handful of callables a
tensor checkpoint needs (tensor/parameter rebuild functions, storage types, ``OrderedDict`` and,
only when explicitly allowed, ``argparse.Namespace``). Any other global - ``os.system``,
``builtins.eval``, ``subprocess.Popen`` ... - is refused with a :class:`CheckpointError` before
anything runs. Tensors come back lazily as :class:`TensorRef` and are materialised as numpy
arrays (bfloat16 through ``ml_dtypes``) on ``get``.

Every object the unpickler hands out for a global is immutable and private to this module, so a
``BUILD`` opcode aimed at it fails instead of changing a class for the rest of the process. Memory
is bounded by the sizes the file declares: a zip member is read only up to its storage's
``numel * itemsize`` bytes, and every tensor view must lie inside its storage (see docs/export.md,
"The pickle-free reader's guarantees").
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import math
import pickle
import pickletools
import zipfile
from collections.abc import Callable, Iterable
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


# A pickle may nest containers only this deep (a checkpoint needs < 10) and may reach at most this
# many containers per pickle byte while we walk it (memo references can share a list many times).
_MAX_DEPTH = 100
_NODES_PER_BYTE = 4
# data.pkl of a 7B checkpoint is a few MB; a bigger one is a decompression bomb, not weights
_MAX_PICKLE_BYTES = 1 << 30




class _Frozen(type):
    """Metaclass that refuses attribute writes, so a pickle BUILD cannot patch the class."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise CheckpointError(f"the pickle tries to set {name!r} on {cls.__name__} (hostile file)")


class _Namespace(argparse.Namespace, metaclass=_Frozen):
    """What a pickled ``argparse.Namespace`` becomes (instances are ordinary Namespaces)."""


class _Sealed:
    """Base of the objects handed out for allowed globals: no ``__dict__``, no ``__setstate__`` and
    no attribute writes, so BUILD on one raises instead of patching it for later loads."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise CheckpointError(f"the pickle tries to set {name!r} on {type(self).__name__} (hostile file)")


class _StorageType(_Sealed):
    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype):
        object.__setattr__(self, "dtype", dtype)


class _Call(_Sealed):
    """An allowed rebuild function."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[..., Any]):
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)


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
    size, stride = tuple(size), tuple(stride)
    if not all(isinstance(x, int) for x in (storage_offset, *size, *stride)) or len(size) != len(stride):
        raise CheckpointError(f"malformed tensor record (offset {storage_offset!r}, size {size!r}, stride {stride!r})")
    return TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


# built-in types (OrderedDict, tuple) are immutable already; everything else is frozen above
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _Call(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor"): _Call(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Call(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Call(_rebuild_parameter_with_state),
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
                return _Namespace
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
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"{self._path}: malformed storage record {pid[:5]!r} in the pickle")
        ref = self._storages.get(key)
        if ref is None:
            ref = self._storages[key] = _StorageRef(key, stype.dtype, numel)
        elif ref.dtype != stype.dtype or ref.numel != numel:
            raise CheckpointError(f"{self._path}: storage {key!r} is declared twice with different types/sizes")
        return ref


_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}


def _prescan(data: bytes, path: str) -> None:
    """Walks the opcodes once before unpickling. The C unpickler sizes its memo array by the largest
    index it is given, so one ``LONG_BINPUT 0xffffffff`` would make it zero-fill tens of GB; a
    checkpoint numbers its memo entries 0, 1, 2, ..., so an index far beyond the entries stored so
    far is refused here."""
    puts = 0
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name == "MEMOIZE" or op.name.endswith("PUT"):
                puts += 1
            if op.name in _MEMO_OPS and (not isinstance(arg, int) or arg > 2 * puts + 16):
                raise CheckpointError(f"{path}: the pickle uses memo slot {arg!r} after {puts} entries "
                                      "(a memory bomb or a corrupt file); do not load it")
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt pickle ({type(e).__name__}: {e})") from e


_WHOLE = object()  # to_numpy's default (None is a legitimate value inside a checkpoint)


class _Budget:
    """Bounds a walk over the unpickled graph: nesting depth (a cycle or 200k nested dicts would
    otherwise end in RecursionError) and the number of containers visited (a DAG of shared memo
    references can be exponentially large when walked as a tree)."""

    def __init__(self, path: str, pickle_bytes: int):
        self.path, self.left = path, _NODES_PER_BYTE * pickle_bytes + 1000

    def enter(self, depth: int) -> None:
        self.left -= 1
        if depth > _MAX_DEPTH:
            raise CheckpointError(f"{self.path}: the pickle nests containers deeper than {_MAX_DEPTH} levels "
                                  "(or refers to itself); not a checkpoint")
        if self.left < 0:
            raise CheckpointError(f"{self.path}: the pickle's object graph is far larger than the file "
                                  "(shared references); not a checkpoint")


def _flatten(obj: Any, prefix: str, out: dict[str, TensorRef], budget: _Budget, depth: int = 0) -> None:
    if isinstance(obj, TensorRef):
        out[prefix[:-1]] = obj
    elif isinstance(obj, dict):
        budget.enter(depth)
        for k, v in obj.items():
            _flatten(v, f"{prefix}{k}.", out, budget, depth + 1)


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
        except Exception as e:  # a hostile central directory can raise nearly anything
            raise CheckpointError(f"{self.path}: not a readable zip archive ({type(e).__name__}: {e})") from e
        names = self._zip.namelist()
        pkls = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkls:
            raise CheckpointError(f"{self.path}: no '<name>/data.pkl' in the archive; not a torch.save file")
        self._prefix = pkls[0][: -len("data.pkl")]
        self._little = True
        bo = self._prefix + "byteorder"
        try:
            if bo in names:
                self._little = self._read_member(bo, 16).decode().strip() != "big"
            data = self._read_member(pkls[0], _MAX_PICKLE_BYTES)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{self.path}: corrupt archive member ({e}); re-download or re-export it") from e
        _prescan(data, f"{self.path}: {pkls[0]}")
        try:
            self.obj = _RestrictedUnpickler(data, self.path, allow_namespace).load()
        except CheckpointError:
            raise
        except Exception as e:  # whatever the bytes, a Python error and never a crash or a partial load
            raise CheckpointError(f"{self.path}: corrupt pickle in {pkls[0]} ({type(e).__name__}: {e})") from e
        self._budget = len(data)
        self._tensors: dict[str, TensorRef] = {}
        _flatten(self.obj, "", self._tensors, _Budget(self.path, self._budget))
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
    def _read_member(self, member: str, limit: int) -> bytes:
        """At most ``limit`` bytes of ``member``: the declared size is checked first and the
        decompressor is never asked for more, so a small archive cannot inflate into GBs."""
        info = self._zip.getinfo(member)
        if info.file_size > limit:
            raise CheckpointError(
                f"{self.path}: archive member {member!r} declares {info.file_size} bytes where at most {limit} "
                "belong (a decompression bomb or a corrupt file); do not load it"
            )
        with self._zip.open(info) as f:
            return f.read(limit)

    def _storage(self, ref: _StorageRef) -> np.ndarray:
        arr = self._cache.get(ref.key)
        if arr is None:
            member = f"{self._prefix}data/{ref.key}"
            dt = ref.dtype if self._little else ref.dtype.newbyteorder(">")
            need = ref.numel * dt.itemsize
            try:
                raw = self._read_member(member, need)
            except KeyError as e:
                raise CheckpointError(
                    f"{self.path}: storage {member!r} is missing from the archive (truncated?)"
                ) from e
            except CheckpointError:
                raise
            except Exception as e:
                raise CheckpointError(
                    f"{self.path}: cannot read {member!r} ({e}); the file is truncated or corrupt"
                ) from e
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
        if any(s < 0 for s in t.shape):
            raise CheckpointError(f"{self.path}: tensor {name!r} has a negative size {t.shape} (corrupt file)")
        n = math.prod(t.shape)
        if n == 0:
            return np.zeros(t.shape, t.dtype)
        # a stride only matters along a dim of size > 1; torch never writes negative strides, and
        # refusing them makes the lowest reachable element the offset itself, so the two bounds below
        # hold for every element (a sum over mixed-sign strides could cancel and hide an escape)
        stride = tuple(d if s > 1 else 0 for s, d in zip(t.shape, t.stride))
        numel = t.storage.numel
        if any(d < 0 for d in stride) or t.offset < 0:
            raise CheckpointError(f"{self.path}: tensor {name!r} has a negative stride or offset (corrupt file)")
        last = t.offset + sum((s - 1) * d for s, d in zip(t.shape, stride))
        if last >= numel or n > numel:
            raise CheckpointError(f"{self.path}: tensor {name!r} reaches past its storage (corrupt file)")
        st = self._storage(t.storage)
        view = np.lib.stride_tricks.as_strided(
            st[t.offset :], shape=t.shape, strides=tuple(d * st.itemsize for d in stride), writeable=False
        )
        return np.array(view, copy=True)

    def to_numpy(self, obj: Any = _WHOLE) -> Any:
        """``obj`` (default: the whole file) with every TensorRef replaced by a numpy array."""
        return self._to_numpy(self.obj if obj is _WHOLE else obj, _Budget(self.path, self._budget), 0)

    def _to_numpy(self, obj: Any, budget: _Budget, depth: int) -> Any:
        if isinstance(obj, TensorRef):
            return self.materialize(obj)
        if isinstance(obj, (dict, list, tuple, argparse.Namespace)):
            budget.enter(depth)

        def conv(v: Any) -> Any:
            return self._to_numpy(v, budget, depth + 1)

        if isinstance(obj, collections.OrderedDict):
            return collections.OrderedDict((k, conv(v)) for k, v in obj.items())
        if isinstance(obj, dict):
            return {k: conv(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return (list if isinstance(obj, list) else tuple)(conv(v) for v in obj)
        if isinstance(obj, argparse.Namespace):
            return argparse.Namespace(**{k: conv(v) for k, v in vars(obj).items()})
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
