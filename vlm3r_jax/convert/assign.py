"""The name map between a model's parameters and a checkpoint's tensors, used both ways.

A converter describes, for every parameter path of our model (``"layers.0.attn.q.kernel"``),
which source tensor it comes from and how its layout differs (:class:`Src` with a
:class:`Layout`: identity, transpose, a conv permutation, row block i of n of a packed tensor, the
first n rows). :func:`load_state` reads a checkpoint through the map; :func:`export_tensors`
writes our parameters back through the same map, inverting each layout (packed blocks are
concatenated in order), so names and transforms are written down once per network. Layer stacks
(:mod:`vlm3r_jax.layers.scan`) hold ``layers.attn.q.kernel`` as one ``[L, ...]`` array; name maps
still speak per layer, and one stacked target is filled from (or split into) its L per-layer
tensors. Loading streams one tensor at a time into the target dtype and sharding, and collects
every missing, mis-shaped and unexpected tensor into a single :class:`CheckpointError` that names
the files involved.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlm3r_jax.convert.errors import CheckpointError
from vlm3r_jax.convert.sources import TensorSource
from vlm3r_jax.layers.scan import is_stacked, per_layer_name


# --- invertible layout ops ----------------------------------------------------------------------
class Layout:
    """How a checkpoint tensor's layout differs from our parameter's: ``load`` (reference -> ours)
    and its inverse ``save``. Calling a Layout loads, so it is a :class:`Src` ``fn`` as is."""

    block: tuple[int, int] | None = None  # (i, n): our parameter is row block i of n of the tensor
    lossy = False  # load drops data that only the original tensor can give back (see refill)

    def load(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def save(self, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def refill(self, saved: np.ndarray, original: np.ndarray) -> np.ndarray:
        """``saved`` completed with what ``load`` dropped from ``original`` (only lossy layouts)."""
        return saved

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.load(x)


@dataclasses.dataclass(frozen=True)
class Identity(Layout):
    def load(self, x: np.ndarray) -> np.ndarray:
        return x

    def save(self, y: np.ndarray) -> np.ndarray:
        return y


@dataclasses.dataclass(frozen=True)
class Transpose(Layout):
    """PyTorch Linear ``[out, in]`` <-> our kernel ``[in, out]`` (the last two axes swapped)."""

    def load(self, x: np.ndarray) -> np.ndarray:
        return np.swapaxes(x, -1, -2)

    def save(self, y: np.ndarray) -> np.ndarray:
        return np.swapaxes(y, -1, -2)


@dataclasses.dataclass(frozen=True)
class Permute(Layout):
    """Axes permutation: ours = ``np.transpose(reference, axes)``."""

    axes: tuple[int, ...]

    def load(self, x: np.ndarray) -> np.ndarray:
        return np.transpose(x, self.axes)

    def save(self, y: np.ndarray) -> np.ndarray:
        return np.transpose(y, tuple(int(a) for a in np.argsort(self.axes)))


@dataclasses.dataclass(frozen=True)
class Block(Layout):
    """Row block ``i`` of ``n`` equal blocks of a packed tensor (torch ``nn.MultiheadAttention``'s
    ``in_proj_weight`` [3d, d] holds q, k, v), then ``inner``. Export concatenates the n blocks."""

    i: int
    n: int
    inner: Layout = Identity()

    @property
    def block(self) -> tuple[int, int]:
        return (self.i, self.n)

    def load(self, x: np.ndarray) -> np.ndarray:
        d = x.shape[0] // self.n
        return self.inner.load(x[self.i * d:(self.i + 1) * d])

    def save(self, y: np.ndarray) -> np.ndarray:
        return self.inner.save(y)


@dataclasses.dataclass(frozen=True)
class Rows(Layout):
    """The first ``n`` rows, then ``inner`` (a vocabulary cut to ``len(tokenizer)`` as HF
    ``resize_token_embeddings`` does). Export writes the n rows; :meth:`refill` appends the rows
    past n from the original tensor."""

    n: int
    inner: Layout = Identity()
    lossy = True

    def load(self, x: np.ndarray) -> np.ndarray:
        return self.inner.load(x[: self.n])

    def save(self, y: np.ndarray) -> np.ndarray:
        return self.inner.save(y)

    def refill(self, saved: np.ndarray, original: np.ndarray) -> np.ndarray:
        if original.shape[0] <= saved.shape[0]:
            return saved
        return np.concatenate([saved, np.asarray(original[saved.shape[0]:]).astype(saved.dtype)], axis=0)


identity = Identity()
transpose = Transpose()
conv_oihw_to_hwio = Permute((2, 3, 1, 0))  # PyTorch Conv2d [out, in, kh, kw] <-> JAX [kh, kw, in, out]


@dataclasses.dataclass(frozen=True)
class Src:
    """Where one parameter comes from: source key(s) and a transform applied to the array(s). A
    single key with a :class:`Layout` is invertible (exportable); several keys or a plain function
    are a value computed on load only (e.g. LoRA merged into a kernel)."""

    keys: str | tuple[str, ...]
    fn: Callable[..., np.ndarray] = identity

    @property
    def key_tuple(self) -> tuple[str, ...]:
        return (self.keys,) if isinstance(self.keys, str) else tuple(self.keys)


def path_str(path: Sequence[Any]) -> str:
    """``('layers', 0, 'attn', 'kernel')`` -> ``"layers.0.attn.kernel"``."""
    parts = []
    for p in path:
        p = getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))
        parts.append(str(p))
    return ".".join(parts)


def flat_variables(state: Any) -> dict[str, nnx.Variable]:
    """Flattens an ``nnx.State`` into ``{dotted path: Variable}``."""
    leaves = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    return {path_str(p): v for p, v in leaves if isinstance(v, nnx.Variable)}


def per_layer_slots(state: Any) -> dict[str, tuple[str, int | None]]:
    """``{per-layer name: (variable path, layer index or None)}``: a stacked variable at
    ``layers.attn.q.kernel`` gives ``layers.0.attn.q.kernel``, ``layers.1...``; others map to themselves."""
    leaves = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    out: dict[str, tuple[str, int | None]] = {}
    for p, v in leaves:
        if not isinstance(v, nnx.Variable):
            continue
        path = path_str(p)
        if is_stacked(v):
            names = path.split(".")
            for i in range(v.get_value().shape[0]):
                out[per_layer_name(names, v, i)] = (path, i)
        else:
            out[path] = (path, None)
    return out


def param_slots(state: Any) -> dict[str, tuple[str, int | None]]:
    """:func:`per_layer_slots` of the ``nnx.Param`` variables only: what checkpoints hold (RNG
    streams, caches and the like are not written or read)."""
    variables = flat_variables(state)
    return {n: (p, i) for n, (p, i) in per_layer_slots(state).items() if isinstance(variables[p], nnx.Param)}


def flat_arrays(state: Any) -> dict[str, np.ndarray]:
    """``{per-layer name: numpy array}`` of a concrete state (for export and tests): layer
    stacks come out as one array per layer, under the names checkpoints use."""
    flat = {k: np.asarray(v.get_value()) for k, v in flat_variables(state).items()}
    return {name: flat[path] if i is None else flat[path][i] for name, (path, i) in per_layer_slots(state).items()}


def load_state(
    state: Any,
    source: TensorSource,
    mapping: Mapping[str, Src],
    *,
    ignore: Sequence[str] = (),
    dtype: Any = None,
    shardings: Any = None,
    what: str = "checkpoint",
) -> Any:
    """Returns ``state`` (abstract or concrete ``nnx.State``) with every variable loaded.

    ``mapping`` must cover every variable path of ``state``. ``ignore`` holds regexes of source
    keys that may be present but are not used. ``dtype`` casts floating-point parameters
    (default: the target variable's dtype). ``shardings`` (same structure as ``state``'s values,
    e.g. from :func:`vlm3r_jax.sharding.state_shardings`) places each tensor as it is loaded.
    """
    # Only parameters come from checkpoints; RNG streams, caches and the like pass through.
    variables = flat_variables(state)
    slots = param_slots(state)
    unmapped = sorted(set(slots) - set(mapping))
    if unmapped:
        raise CheckpointError(f"internal: no source rule for parameters {unmapped[:10]} ({what})")
    shard_flat = flat_variables(shardings) if shardings is not None else {}
    present = set(source.keys())
    consumed: set[str] = set()
    missing: list[str] = []
    bad_shape: list[str] = []
    host: dict[str, Any] = {}  # variable path -> array, or {layer: array} for a stack
    for name, (path, layer) in slots.items():
        rule = mapping[name]
        keys = rule.key_tuple
        absent = [k for k in keys if k not in present]
        if absent:
            missing.extend(absent)
            continue
        consumed.update(keys)
        arr = rule.fn(*[source.get(k) for k in keys])
        target = variables[path].get_value()
        want = tuple(target.shape) if layer is None else tuple(target.shape[1:])
        if tuple(arr.shape) != want:
            shapes = ", ".join(f"{k} {list(source.shape(k))}" for k in keys)
            bad_shape.append(f"{name}: expected {list(want)}, checkpoint has {shapes} (in {source.where(keys[0])})")
            continue
        tdtype = target.dtype
        if dtype is not None and jnp.issubdtype(tdtype, jnp.floating):
            tdtype = jnp.dtype(dtype)
        arr = np.asarray(arr).astype(tdtype, copy=False)
        if layer is None:
            host[path] = arr
        else:
            host.setdefault(path, {})[layer] = arr
    patterns = [re.compile(p) for p in ignore]
    unexpected = sorted(k for k in present - consumed if not any(p.fullmatch(k) for p in patterns))
    problems = []
    if missing:
        problems.append(
            f"missing tensors ({len(missing)}): {sorted(set(missing))[:20]}"
            + (" ..." if len(set(missing)) > 20 else "")
        )
    if bad_shape:
        problems.append("mis-shaped tensors:\n  " + "\n  ".join(bad_shape[:20]))
    if unexpected:
        problems.append(
            f"unexpected tensors ({len(unexpected)}): {unexpected[:20]}" + (" ..." if len(unexpected) > 20 else "")
        )
    if problems:
        raise CheckpointError(
            f"{what} at {source.where()} does not match the model config:\n"
            + "\n".join(problems)
            + "\nCheck that config.json belongs to these weights and that the files are complete."
        )

    loaded: dict[str, Any] = {}
    for path, arr in host.items():
        if isinstance(arr, dict):  # a layer stack: all L layers arrived (else an error was raised)
            arr = np.stack([arr[i] for i in range(len(arr))])
        sh = shard_flat.get(path)
        sh = sh.get_value() if isinstance(sh, nnx.Variable) else sh
        loaded[path] = jax.device_put(arr, sh) if sh is not None else jnp.asarray(arr)

    def put(p, v):
        key = path_str(p)
        if isinstance(v, nnx.Variable) and key in loaded:
            return v.replace(loaded[key])
        return v

    return jax.tree_util.tree_map_with_path(put, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def export_tensors(state: Any, mapping: Mapping[str, Src], *, fill: TensorSource | None = None,
                   what: str = "export") -> dict[str, np.ndarray]:
    """``{reference key: numpy array}`` of the parameters of a concrete ``state``: the inverse of
    :func:`load_state` through the same ``mapping`` (each :class:`Layout` saved back, packed row
    blocks concatenated in order). Every entry of ``mapping`` must name a parameter of ``state``, so a
file missing a tensor is never written silently (callers pass the part of a map they export).
    ``fill`` (the original checkpoint) gives back what lossy layouts dropped on load (vocabulary
    rows past ``len(tokenizer)``)."""
    variables = flat_variables(state)
    slots = param_slots(state)
    unmapped = sorted(set(slots) - set(mapping))
    if unmapped:
        raise CheckpointError(f"internal: no name rule for parameters {unmapped[:10]} ({what})")
    absent = sorted(set(mapping) - set(slots))
    if absent:
        raise CheckpointError(f"internal: parameters {absent[:10]} missing from the state being exported ({what})")
    arrays: dict[str, np.ndarray] = {}
    out: dict[str, np.ndarray] = {}
    packed: dict[str, dict[int, np.ndarray]] = {}
    ops: dict[str, Layout] = {}
    for name, (path, layer) in slots.items():
        rule = mapping[name]
        if not isinstance(rule.fn, Layout) or len(rule.key_tuple) != 1:
            raise CheckpointError(f"internal: {name} is computed from {rule.key_tuple} on load, not renamed; it "
                                  f"cannot be exported through the map ({what})")
        if path not in arrays:
            arrays[path] = np.asarray(variables[path].get_value())
        arr = rule.fn.save(arrays[path] if layer is None else arrays[path][layer])
        key = rule.keys
        ops[key] = rule.fn
        if rule.fn.block is None:
            out[key] = arr
        else:
            packed.setdefault(key, {})[rule.fn.block[0]] = arr
    for key, blocks in packed.items():
        n = ops[key].block[1]
        if sorted(blocks) != list(range(n)):
            raise CheckpointError(f"internal: {key} packs {n} blocks, the state gives {sorted(blocks)} ({what})")
        out[key] = np.concatenate([blocks[i] for i in range(n)], axis=0)
    if fill is not None:
        present = set(fill.keys())
        for key, op in ops.items():
            if op.lossy and key in present:
                out[key] = op.refill(out[key], fill.get(key))
    return {k: np.ascontiguousarray(v) for k, v in out.items()}
