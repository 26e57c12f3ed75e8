"""Multi-process (multi-host) JAX: start-up from the environment and global batches from
per-process data.

One JAX process runs per host (TPU VM worker, GPU node or, in tests, a localhost process with
fake CPU devices). Every process runs the same program; the mesh spans the devices of all of
them. Each process loads only its own rows of the global batch and :func:`global_batch`
assembles one global ``jax.Array`` from those local pieces.

Which rows a process feeds: the global batch along the batch axis is the concatenation of the
processes' local batches in process order (for ``[accum, micro, ...]`` batches: every
micro-batch is the concatenation of the processes' local micro-batches). So a data pipeline
that gives process ``p`` the ``p``-th contiguous slice of each global (micro-)batch reproduces a
single-process run exactly; ``grain`` shards by process with ``ShardByJaxProcess`` or
``dataset[p::P]``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlm3r_jax import sharding

log = logging.getLogger("vlm3r_jax.train")

# Explicit settings, read in this order; JAX_* are also what jax.distributed reads itself.
ENV_COORDINATOR = ("VLM3R_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS")
ENV_NUM_PROCESSES = ("VLM3R_NUM_PROCESSES", "JAX_NUM_PROCESSES")
ENV_PROCESS_ID = ("VLM3R_PROCESS_ID", "JAX_PROCESS_ID")
ENV_LOCAL_DEVICE_IDS = ("VLM3R_LOCAL_DEVICE_IDS", "JAX_LOCAL_DEVICE_IDS")


def _first_env(names: tuple[str, ...], env: Mapping[str, str]) -> str | None:
    for n in names:
        v = env.get(n)
        if v not in (None, ""):
            return v
    return None


def _auto_cluster(env: Mapping[str, str]) -> str | None:
    """Name of a cluster environment jax.distributed can configure itself from, or None."""
    if int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1 and "SLURM_JOB_ID" in env:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "ompi"
    # Cloud TPU VM pods: libtpu sets these on every worker of a multi-host slice.
    hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("MEGASCALE_COORDINATOR_ADDRESS")
    if hosts and ("," in hosts or "MEGASCALE_COORDINATOR_ADDRESS" in env):
        return "tpu"
    if env.get("VLM3R_DISTRIBUTED_AUTO", "") == "1":  # e.g. a TPU pod where the env is not set yet
        return "auto"
    return None


def distributed_settings(env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The ``jax.distributed.initialize`` keyword arguments the environment asks for, or None for
    a single-process run. Raises ``ValueError`` naming the variable when settings are partial."""
    env = os.environ if env is None else env
    addr = _first_env(ENV_COORDINATOR, env)
    nproc = _first_env(ENV_NUM_PROCESSES, env)
    pid = _first_env(ENV_PROCESS_ID, env)
    given = {"coordinator address": addr, "number of processes": nproc, "process id": pid}
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        # A coordinator address alone is fine on SLURM/TPU, which fill in the rest.
        if missing and not (_auto_cluster(env) and addr is not None):
            raise ValueError(
                f"incomplete multi-process settings: missing {missing}. Set all of "
                f"{ENV_COORDINATOR[0]}=host:port, {ENV_NUM_PROCESSES[0]}=N and {ENV_PROCESS_ID[0]}=i "
                "(0..N-1) on every process, or none of them for a single-process run."
            )
        kw: dict[str, Any] = {"coordinator_address": addr}
        try:
            if nproc is not None:
                kw["num_processes"] = int(nproc)
            if pid is not None:
                kw["process_id"] = int(pid)
        except ValueError as e:
            raise ValueError(f"{ENV_NUM_PROCESSES[0]} / {ENV_PROCESS_ID[0]} must be integers: {e}") from None
        ids = _first_env(ENV_LOCAL_DEVICE_IDS, env)
        if ids:
            kw["local_device_ids"] = [int(i) for i in ids.split(",")]
        if "num_processes" in kw and kw["num_processes"] <= 1:
            return None
        return kw
    if _auto_cluster(env):
        return {}
    return None


def initialize_from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> bool:
    """Calls ``jax.distributed.initialize`` when the environment describes a multi-process run;
    returns True if JAX now runs multi-process. Must run before any other JAX call.

    Explicit settings: ``VLM3R_COORDINATOR_ADDRESS`` (host:port of process 0),
    ``VLM3R_NUM_PROCESSES``, ``VLM3R_PROCESS_ID`` (or the ``JAX_*`` spellings) and optionally
    ``VLM3R_LOCAL_DEVICE_IDS`` ("0,1,2,3"). Without them, SLURM (``srun``, more than one task),
    Open MPI and Cloud TPU pods are detected and jax.distributed configures itself; set
    ``VLM3R_DISTRIBUTED_AUTO=1`` to force that auto-detection. ``overrides`` win over the
    environment (tests pass ``coordinator_address=..., num_processes=..., process_id=...``).
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    kw = distributed_settings(env)
    if overrides:
        kw = {**(kw or {}), **overrides}
    if kw is None:
        return False
    log.info("jax.distributed.initialize(%s)", ", ".join(f"{k}={v}" for k, v in kw.items()) or "auto-detect")
    jax.distributed.initialize(**kw)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return jax.process_count() > 1


def is_lead_process() -> bool:
    """True on the process that writes logs, metrics and exports (process 0)."""
    return jax.process_index() == 0


def _batch_groups(mesh: Mesh, axes: tuple[str, ...]) -> tuple[int, int]:
    """(number of distinct batch shards on the mesh, number of them this process holds)."""
    if not axes:
        return 1, 1
    names = list(mesh.axis_names)
    idx = [names.index(a) for a in axes]
    me = jax.process_index()
    mine = set()
    for coord in np.ndindex(mesh.devices.shape):
        if mesh.devices[coord].process_index == me:
            mine.add(tuple(coord[i] for i in idx))
    total = int(np.prod([mesh.shape[a] for a in axes]))
    return total, len(mine)


def _batch_mesh_axes(mesh: Mesh, rules: sharding.LogicalRules, ndim: int, batch_axis: int) -> tuple[str, ...]:
    names: list[str | None] = [None] * ndim
    names[batch_axis] = "batch"
    spec = sharding.logical_to_spec(tuple(names), None, mesh, rules)
    entry = spec[batch_axis] if len(spec) > batch_axis else None
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def global_batch(local_batch: Any, mesh: Mesh, rules: sharding.LogicalRules = sharding.DEFAULT_RULES,
                 batch_axis: int = 0, strict: bool = False) -> Any:
    """A pytree of this process's host arrays -> global ``jax.Array``s sharded over ``batch``.

    Single process: exactly :func:`vlm3r_jax.sharding.shard_batch` (a batch dimension that does
    not divide by the data-parallel size is replicated, or raises with ``strict=True``). Several processes: axis ``batch_axis``
    of each leaf is this process's slice; the global size is the local size times the number of
    processes that hold different batch shards (processes that are replicas along the batch
    axes, e.g. under pure tensor parallelism, must feed identical data). Leaves with fewer than
    ``batch_axis + 1`` dims are replicated and must be equal on every process.
    """
    if jax.process_count() == 1:
        return sharding.shard_batch(local_batch, mesh, rules, batch_axis=batch_axis, strict=strict)

    def one(x: Any) -> jax.Array:
        x = np.asarray(x)
        if x.ndim <= batch_axis:
            return jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec()), x, x.shape)
        axes = _batch_mesh_axes(mesh, rules, x.ndim, batch_axis)
        total, local = _batch_groups(mesh, axes)
        if x.shape[batch_axis] % local:
            raise ValueError(
                f"process {jax.process_index()} got a local batch of {x.shape[batch_axis]} rows on axis "
                f"{batch_axis}, which does not divide over its {local} data-parallel shards (mesh axes {axes} "
                f"of {dict(mesh.shape)}). Make the per-process batch (per micro-batch when accumulating) a "
                f"multiple of {local}."
            )
        shape = list(x.shape)
        shape[batch_axis] = x.shape[batch_axis] * (total // local)
        spec = [None] * x.ndim
        spec[batch_axis] = axes[0] if len(axes) == 1 else axes if axes else None
        return jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec(*spec)), x, tuple(shape))

    return jax.tree_util.tree_map(one, local_batch)


def to_host(x: jax.Array) -> np.ndarray:
    """A (small) global array as a numpy array on every process: replicated arrays are read
    locally, sharded ones are all-gathered across processes."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sync(name: str) -> None:
    """Barrier across processes (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is True on any (e.g. one worker got SIGTERM); a cheap
    all-gather of one int per process, skipped with one process."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


def _put_one(x: Any, sh: jax.sharding.Sharding) -> Any:
    if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
        return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x if x.sharding == sh else jax.device_put(x, sh)  # already global: a reshard
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        spec = tuple(sh.spec) + (None,) * (x.ndim - len(sh.spec) + 1)
        data = _put_one(jax.random.key_data(x), NamedSharding(sh.mesh, PartitionSpec(*spec)))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sh, lambda idx: host[idx])


def put(tree: Any, shardings: Any) -> Any:
    """``jax.device_put(tree, shardings)`` that also works when the shardings span several
    processes: each process places its addressable shards from its own host copy, which must
    be identical on all processes (same seed / same checkpoint). Unlike ``device_put`` it does
    not all-gather every array to check that, which would move the whole model over the network.
    ``shardings`` is one sharding for all leaves or a tree matching ``tree``'s arrays."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree_util.tree_map(lambda x: _put_one(x, shardings), tree)
    return jax.tree_util.tree_map(_put_one, tree, shardings)


def shard_state(state: Any, mesh: Mesh, rules: sharding.LogicalRules = sharding.DEFAULT_RULES) -> Any:
    """:func:`vlm3r_jax.sharding.shard_state`, multi-process safe (see :func:`put`)."""
    if jax.process_count() == 1:
        return sharding.shard_state(state, mesh, rules)
    return put(state, sharding.state_shardings(state, mesh, rules))
