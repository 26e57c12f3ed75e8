"""Device mesh and logical-axis sharding.

Model code never names mesh axes. Every parameter carries a ``logical_axes``
metadata tuple (e.g. ``("embed", "mlp")``) and key activations are constrained
with logical names; a rules table from the config maps logical names to mesh
axes (``data``, ``fsdp``, ``tensor``). Changing the mesh or the rules therefore
never touches model code.

Rules are a sequence of ``(logical_name, mesh_axes)`` pairs where ``mesh_axes``
is ``None`` (replicate), one mesh-axis name, or a tuple of names. The first rule
for a logical name wins. A mesh axis is used at most once per array; a
dimension whose size is not divisible by the product of its mesh axes is
replicated instead (so odd tiny test shapes still shard what they can).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LogicalRules = Sequence[tuple[str, Any]]

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("frames", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # parameters
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("norm", None),
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("patch", None),
    ("positions", None),
    ("layers", None),
    ("lora_rank", None),
)

LOGICAL_AXES_KEY = "logical_axes"


def rules_from_config(rules: Any) -> tuple[tuple[str, Any], ...]:
    """Normalises a rules table from a ConfigDict/list into tuples (lists become tuples)."""
    if rules is None:
        return DEFAULT_RULES
    out = []
    for item in rules:
        name, axes = item
        if isinstance(axes, list):
            axes = tuple(axes)
        out.append((str(name), axes))
    return tuple(out)


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a ``(data, fsdp, tensor)`` mesh with ``AxisType.Auto``.

    ``shape`` maps axis name to size; one axis may be ``-1`` to take the remaining
    devices. Missing axes default to 1, except ``data`` which defaults to ``-1``.
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = dict(shape or {})
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; valid axes are {MESH_AXES}")
    sizes = {ax: int(shape.get(ax, -1 if ax == "data" else 1)) for ax in MESH_AXES}
    fill = [ax for ax, s in sizes.items() if s == -1]
    if len(fill) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {fill}")
    known = math.prod(s for s in sizes.values() if s != -1)
    if fill:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide by the fixed mesh axes {sizes}")
        sizes[fill[0]] = len(devices) // known
    total = math.prod(sizes.values())
    if total > len(devices):
        raise ValueError(f"mesh {sizes} needs {total} devices but only {len(devices)} are available")
    dev = np.asarray(devices[:total]).reshape([sizes[a] for a in MESH_AXES])
    return Mesh(dev, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _rule_lookup(rules: LogicalRules) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name, axes in rules:
        table.setdefault(name, axes)
    return table


def logical_to_spec(
    logical_axes: Sequence[str | None] | None,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    rules: LogicalRules = DEFAULT_RULES,
) -> PartitionSpec:
    """Maps logical names of one array to a PartitionSpec.

    With ``shape`` and ``mesh`` given, dimensions that do not divide evenly over
    their mesh axes are replicated rather than failing at placement time.
    """
    if not logical_axes:
        return PartitionSpec()
    table = _rule_lookup(rules)
    used: set[str] = set()
    spec: list[Any] = []
    for dim, name in enumerate(logical_axes):
        axes = table.get(name) if name is not None else None
        if axes is None:
            spec.append(None)
            continue
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
        axes_t = tuple(a for a in axes_t if a not in used)
        if mesh is not None:
            axes_t = tuple(a for a in axes_t if mesh.shape.get(a, 1) > 1)
        if shape is not None and mesh is not None and axes_t:
            size = math.prod(mesh.shape[a] for a in axes_t)
            if shape[dim] % size:
                axes_t = ()
        used.update(axes_t)
        spec.append(None if not axes_t else axes_t[0] if len(axes_t) == 1 else axes_t)
    return PartitionSpec(*spec)


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def state_specs(state: Any, mesh: Mesh | None = None, rules: LogicalRules = DEFAULT_RULES) -> Any:
    """PartitionSpecs for an ``nnx.State`` (or any pytree of ``nnx.Variable``), from ``logical_axes`` metadata."""

    def one(v: Any) -> PartitionSpec:
        if _is_var(v):
            axes = v.get_metadata().get(LOGICAL_AXES_KEY)
            shape = getattr(v.get_value(), "shape", None)
            return logical_to_spec(axes, shape, mesh, rules)
        return PartitionSpec()

    return jax.tree_util.tree_map(one, state, is_leaf=_is_var)


def state_shardings(state: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Any:
    """NamedShardings with the same tree structure as the *values* of ``state``.

    The result matches ``nnx.State`` pytrees (Variables are pytree nodes with one
    leaf), so it can be passed directly as ``in_shardings``/``out_shardings``.
    """

    def one(v: Any) -> Any:
        if _is_var(v):
            axes = v.get_metadata().get(LOGICAL_AXES_KEY)
            shape = getattr(v.get_value(), "shape", None)
            sh = NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))
            return v.replace(sh)
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map(one, state, is_leaf=_is_var)


def shard_state(state: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Any:
    """Places every variable of ``state`` on the mesh according to its logical axes."""
    shardings = state_shardings(state, mesh, rules)
    return jax.device_put(state, shardings)


def batch_sharding(
    mesh: Mesh, ndim: int, rules: LogicalRules = DEFAULT_RULES, leading: str = "batch"
) -> NamedSharding:
    """Sharding of a batch array: leading axis over the ``batch`` rule, the rest replicated."""
    spec = logical_to_spec((leading,) + (None,) * (ndim - 1), None, mesh, rules)
    return NamedSharding(mesh, spec)


def shard_batch(batch: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES, batch_axis: int = 0) -> Any:
    """Places a pytree of host arrays on the mesh, axis ``batch_axis`` split over ``batch``
    (``batch_axis=1`` for ``[accum, micro_batch, ...]`` gradient-accumulation batches).

    Batch dimensions that do not divide by the data-parallel size are replicated.
    """

    def one(x: Any) -> Any:
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.ndim <= batch_axis:
            return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))
        names = [None] * x.ndim
        names[batch_axis] = "batch"
        spec = logical_to_spec(tuple(names), x.shape, mesh, rules)
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map(one, batch)


# --- activation constraints -------------------------------------------------------------------
_ACTIVE: contextvars.ContextVar[tuple[Mesh, tuple] | None] = contextvars.ContextVar("vlm3r_sharding", default=None)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Iterator[Mesh]:
    """Activates ``mesh`` (``jax.set_mesh``) and the logical rules for :func:`constrain` while tracing."""
    token = _ACTIVE.set((mesh, tuple(rules)))
    try:
        with jax.set_mesh(mesh):
            yield mesh
    finally:
        _ACTIVE.reset(token)


def active_mesh() -> tuple[Mesh, tuple] | None:
    """(mesh, rules) activated by :func:`use_mesh`, or None outside it."""
    return _ACTIVE.get()


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` by logical names; a no-op outside :func:`use_mesh`."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    spec = logical_to_spec(logical_axes, x.shape, mesh, rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
