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


def _axis_sizes(shape: Mapping[str, int] | None, default_data: int, what: str) -> dict[str, int]:
    shape = dict(shape or {})
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown {what} axes {sorted(unknown)}; valid axes are {MESH_AXES}")
    return {ax: int(shape.get(ax, default_data if ax == "data" else 1)) for ax in MESH_AXES}


def _fmt_axes(sizes: Mapping[str, int]) -> str:
    return " x ".join(f"{a}={s}" for a, s in sizes.items())


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None,
              dcn_shape: Mapping[str, int] | None = None) -> Mesh:
    """Builds a ``(data, fsdp, tensor)`` mesh with ``AxisType.Auto`` over all ``devices``.

    ``shape`` maps axis name to its size within one slice; one axis may be ``-1`` to take the
    remaining devices. Missing axes default to 1, except ``data`` which defaults to ``-1``.
    ``dcn_shape`` (e.g. ``{"data": 2}``) splits axes across slices (TPU multi-slice) or hosts
    (GPU nodes), whose links are slower; the mesh axis is then ``shape[a] * dcn_shape[a]``.
    Device order comes from ``mesh_utils.create_device_mesh`` / ``create_hybrid_device_mesh``,
    which lay axes along the physical interconnect. The mesh must use every device.
    """
    from jax.experimental import mesh_utils

    devices = list(devices if devices is not None else jax.devices())
    sizes = _axis_sizes(shape, -1, "mesh")
    dcn = _axis_sizes(dcn_shape, 1, "mesh.dcn")
    if any(s < 1 for s in dcn.values()):
        raise ValueError(f"mesh.dcn sizes must be >= 1, got {_fmt_axes(dcn)}")
    slices = math.prod(dcn.values())
    if len(devices) % slices:
        raise ValueError(f"{len(devices)} devices do not split into {slices} slices ({_fmt_axes(dcn)})")
    per_slice = len(devices) // slices
    fill = [ax for ax, s in sizes.items() if s == -1]
    if len(fill) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {fill}")
    known = math.prod(s for s in sizes.values() if s != -1)
    if fill:
        if per_slice % known:
            raise ValueError(f"{per_slice} devices do not divide by the fixed mesh axes {_fmt_axes(sizes)}; "
                             "change mesh.shape")
        sizes[fill[0]] = per_slice // known
    total = math.prod(sizes.values()) * slices
    if total != len(devices):
        raise ValueError(f"mesh {_fmt_axes({a: sizes[a] * dcn[a] for a in MESH_AXES})} needs {total} devices but "
                         f"{len(devices)} are available; change mesh.shape (one axis may be -1)")
    ici_shape = [sizes[a] for a in MESH_AXES]
    if slices == 1:
        dev = mesh_utils.create_device_mesh(ici_shape, devices, allow_split_physical_axes=True)
    else:
        granules = {getattr(d, "slice_index", None) for d in devices}
        by_process = None in granules  # GPU nodes: each process is a granule
        try:
            dev = mesh_utils.create_hybrid_device_mesh(ici_shape, [dcn[a] for a in MESH_AXES], devices,
                                                       process_is_granule=by_process, allow_split_physical_axes=True)
        except (ValueError, AssertionError) as e:
            raise ValueError(f"mesh.dcn {_fmt_axes(dcn)} asks for {slices} slices, but the {len(devices)} devices "
                             f"do not form them ({e}); set mesh.dcn_* to 1 on a single slice") from e
    return Mesh(dev, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def mesh_from_config(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh a config's ``mesh`` block describes: ``shape`` per slice and ``dcn_data`` /
    ``dcn_fsdp`` across slices (see ``configs/common.py``)."""
    return make_mesh(dict(mesh_cfg.shape), devices=devices, dcn_shape=dcn_from_config(mesh_cfg))


def dcn_from_config(mesh_cfg: Any) -> dict[str, int]:
    """``{"data": mesh.dcn_data, "fsdp": mesh.dcn_fsdp}``: how many slices each axis spans (default 1)."""
    return {a: int(mesh_cfg.get(f"dcn_{a}", 1) or 1) for a in ("data", "fsdp")}


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


def batch_shards(mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> dict[str, int]:
    """The mesh axes (size > 1) that the ``batch`` rule splits rows over, with their sizes."""
    axes = _rule_lookup(rules).get("batch")
    axes_t = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return {a: int(mesh.shape[a]) for a in axes_t if mesh.shape.get(a, 1) > 1}


def check_batch_divides(rows: int, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES, what: str = "micro-batch") -> None:
    """Training must not silently replicate a batch that does not split over the data axes
    (every device would compute every row): one clear error instead."""
    shards = batch_shards(mesh, rules)
    n = math.prod(shards.values())
    if rows % n:
        raise ValueError(
            f"{what} of {rows} rows does not divide over the {n} data-parallel shards "
            f"({_fmt_axes(shards)} of mesh {dict(mesh.shape)}); make the global batch / grad_accum_steps a "
            f"multiple of {n} or shrink mesh.shape's data/fsdp axes")


def shard_batch(batch: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES, batch_axis: int = 0,
                strict: bool = False) -> Any:
    """Places a pytree of host arrays on the mesh, axis ``batch_axis`` split over ``batch``
    (``batch_axis=1`` for ``[accum, micro_batch, ...]`` gradient-accumulation batches).

    Batch dimensions that do not divide by the data-parallel size are replicated (inference
    and evaluation tails), or raise with ``strict=True`` (training).
    """

    def one(x: Any) -> Any:
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.ndim <= batch_axis:
            return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))
        if strict:
            check_batch_divides(x.shape[batch_axis], mesh, rules)
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
