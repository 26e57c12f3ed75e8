"""Which platform attention is compiled for: the default backend, or the target of an ahead-of-time
compile (a CPU host compiling for TPU devices sets it with :func:`target_platform`)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax

_TARGET_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("attention_target", default=None)
_ALIASES = {"cuda": "gpu", "rocm": "gpu"}


@contextlib.contextmanager
def target_platform(platform: str) -> Iterator[None]:
    """Resolve ``auto`` for ``platform`` ("cpu", "gpu", "tpu") instead of the default backend,
    e.g. when a CPU host compiles ahead of time for TPU devices."""
    token = _TARGET_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TARGET_PLATFORM.reset(token)


def current_platform() -> str:
    """"cpu", "gpu" or "tpu" (or another backend name) for the code being traced now."""
    platform = _TARGET_PLATFORM.get() or jax.default_backend()
    return _ALIASES.get(platform, platform)


def target_is(platform: str) -> bool:
    return current_platform() == platform
