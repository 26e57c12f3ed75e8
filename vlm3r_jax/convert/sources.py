"""The ``TensorSource`` protocol: a read-only, lazily loaded name -> array mapping.

Every loader (safetensors dirs, pickle-free torch ``.pth``/``.bin`` readers, in-memory
dicts) implements it, so name mapping and error reporting are written once
(:mod:`vlm3r_jax.convert.assign`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class TensorSource(Protocol):
    def keys(self) -> Iterable[str]:
        """All tensor names."""

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape without loading the data."""

    def get(self, key: str) -> np.ndarray:
        """The tensor as a numpy array (may be a read-only memory map)."""

    def where(self, key: str | None = None) -> str:
        """The file that holds ``key`` (or the source as a whole), for error messages."""


class DictSource:
    """A TensorSource over an in-memory dict (tests, already-loaded torch state dicts)."""

    def __init__(self, tensors: Mapping[str, np.ndarray], name: str = "<in-memory>"):
        self._t = dict(tensors)
        self._name = name

    def keys(self) -> Iterable[str]:
        return self._t.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(np.shape(self._t[key]))

    def get(self, key: str) -> np.ndarray:
        return np.asarray(self._t[key])

    def where(self, key: str | None = None) -> str:
        return self._name


class PrefixSource:
    """A view of another source restricted to keys under ``prefix``, with the prefix removed."""

    def __init__(self, inner: TensorSource, prefix: str):
        self._inner = inner
        self._prefix = prefix
        self._keys = [k[len(prefix) :] for k in inner.keys() if k.startswith(prefix)]

    def keys(self) -> Iterable[str]:
        return list(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._inner.shape(self._prefix + key)

    def get(self, key: str) -> np.ndarray:
        return self._inner.get(self._prefix + key)

    def where(self, key: str | None = None) -> str:
        return self._inner.where(None if key is None else self._prefix + key)


class OverlaySource:
    """``top``'s tensors over ``base``'s: a key in both is read from ``top`` (what
    ``load_state_dict(top, strict=False)`` after loading ``base`` leaves in a torch model)."""

    def __init__(self, base: TensorSource, top: TensorSource):
        self._base, self._top = base, top
        self._in_top = set(top.keys())

    def _src(self, key: str) -> TensorSource:
        return self._top if key in self._in_top else self._base

    def keys(self) -> Iterable[str]:
        return list(dict.fromkeys([*self._base.keys(), *self._top.keys()]))

    def shape(self, key: str) -> tuple[int, ...]:
        return self._src(key).shape(key)

    def get(self, key: str) -> np.ndarray:
        return self._src(key).get(key)

    def where(self, key: str | None = None) -> str:
        return f"{self._base.where()} + {self._top.where()}" if key is None else self._src(key).where(key)
