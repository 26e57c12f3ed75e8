"""The training loop, generic over the model: it needs a model, a loss function, which params
train, and a checkpointable Grain iterator of host batches. ``launch/train.py`` wires VLM-3R in.

What it guarantees: restore-from-latest on start (params, optimizer, step, RNG, data iterator),
a checkpoint every ``save_every`` steps and on SIGTERM, a stop with a clear message on a
non-finite loss (the last good checkpoint stays the latest), step time split into data wait
and compute, tokens/s and MFU in the metrics, a tqdm bar, and an optional periodic eval hook.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from vlm3r_jax import sharding, storage
from vlm3r_jax.train import distributed
from vlm3r_jax.train.checkpoint import Checkpointer, PreemptionGuard, abstract_like
from vlm3r_jax.train.metrics import create_writer
from vlm3r_jax.train.optimizer import make_optimizer
from vlm3r_jax.train.state import TrainState
from vlm3r_jax.train.step import LossFn, make_train_step
from vlm3r_jax.train.trainable import split_trainable

log = logging.getLogger("vlm3r_jax.train")


class NonFiniteLossError(RuntimeError):
    pass


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    graphdef: Any
    frozen: Any
    last_step: int
    history: list[dict]
    preempted: bool = False


def _to_micro(batch: dict, accum: int) -> dict:
    """[B, ...] host arrays -> [accum, B / accum, ...]."""
    def one(x):
        x = np.asarray(x)
        if x.shape[0] % accum:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum_steps={accum}")
        return x.reshape((accum, x.shape[0] // accum) + x.shape[1:])

    # numeric fields only: ids, question types and answers stay on the host
    return {k: one(v) for k, v in batch.items() if np.asarray(v).dtype.kind in "biuf"}


class _NullWriter:
    """Metrics sink of the non-lead processes (process 0 writes for all)."""

    def write_scalars(self, step: int, scalars: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _data_metrics(data_iter: Any) -> dict:
    """The iterator's running totals (``data/skipped``, ``data/skipped/<kind>``, ``data/examples``),
    when it keeps them, for metrics.jsonl next to the loss."""
    fn = getattr(data_iter, "metrics", None)
    return {k: float(v) for k, v in fn().items()} if callable(fn) else {}


def _replicate_unplaced(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Scalars such as the step, RNG and optimizer counts are created on one device; the jitted
    step runs on the whole mesh, so replicate every array that is not already mesh-sharded."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def one(x):
        if isinstance(x, jax.Array) and not isinstance(x.sharding, jax.sharding.NamedSharding):
            return distributed.put(x, replicated)
        return x

    return jax.tree_util.tree_map(one, tree)


def train(
    cfg: ml_collections.ConfigDict,
    workdir: str,
    model: nnx.Module,
    loss_fn: LossFn,
    data_iter: Iterator[dict],
    *,
    flops_per_token: float | None = None,
    peak_flops: float | None = None,
    flops_per_step: Callable[[dict], float] | None = None,
    check_batch: Callable[[dict], None] | None = None,
    eval_hook: Callable[[int, nnx.Module], dict] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Runs ``cfg.train.steps`` steps (resuming from ``workdir/checkpoints`` if present).

    ``cfg.train``: steps, grad_accum_steps, trainable (regexes), save_every, keep, log_every,
    eval_every, seed, max_seconds (> 0: checkpoint and stop once this call has run that long, e.g.
    to keep a demo inside a wall-time budget; ``last_step`` says where it stopped);
    ``cfg.optim``: see :func:`make_optimizer`; ``cfg.mesh``: shape, rules.
    ``data_iter`` yields dicts of host arrays with a leading batch axis; if it supports Grain
    checkpointing its position is saved with the state. With several JAX processes (see
    :mod:`vlm3r_jax.train.distributed`) every process runs this function with its own iterator
    yielding its local rows; the global batch is assembled across processes, every process
    takes part in checkpointing (Grain state is saved per process) and process 0 writes metrics.
    MFU (with ``peak_flops``): ``flops_per_step(host batch)`` model FLOPs of the whole global
    step, or ``flops_per_token`` x tokens. ``check_batch(host batch)`` may refuse a batch first.
    """
    tc = cfg.train
    max_seconds = float(tc.get("max_seconds", 0) or 0)
    deadline = time.monotonic() + max_seconds if max_seconds > 0 else None
    storage.check_writable(workdir, what="workdir")  # a path or URI: an unusable one fails here, in one line
    mesh = sharding.mesh_from_config(cfg.mesh)
    rules = sharding.rules_from_config(cfg.mesh.get("rules"))
    model.train()
    graphdef, params, frozen = split_trainable(model, list(tc.trainable), include_lora=tc.get("train_lora", True))
    params = distributed.shard_state(params, mesh, rules)
    frozen = distributed.shard_state(frozen, mesh, rules)
    tx, schedule = make_optimizer(cfg.optim, tc.steps)
    state = _replicate_unplaced(TrainState.create(params, tx, seed=tc.get("seed", 0)), mesh)

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=tc.save_every, keep=tc.get("keep", 3),
                        async_save=tc.get("async_checkpoint", True))
    saves_iter = hasattr(data_iter, "get_state")
    start = 0
    if ckpt.latest_step() is not None:
        state, skipped = ckpt.restore_newest_good(abstract_like(state), data_iter if saves_iter else None)
        start = int(state.step)
        if distributed.is_lead_process():
            for line in skipped:
                tqdm.write(line, file=sys.stderr)
            tqdm.write(f"resumed from {ckpt.directory} at step {start}", file=sys.stderr)

    accum = int(tc.get("grad_accum_steps", 1))
    step_fn = jax.jit(make_train_step(graphdef, tx, loss_fn, schedule), donate_argnums=0)
    lead = distributed.is_lead_process()
    writer = create_writer(workdir, tensorboard=tc.get("tensorboard", True)) if lead else _NullWriter()
    guard = PreemptionGuard()
    history: list[dict] = []
    preempted = False
    bar = tqdm(total=tc.steps, initial=start, desc="train", disable=not (progress and lead), dynamic_ncols=True)
    try:
        with sharding.use_mesh(mesh, rules):
            for step in range(start, tc.steps):
                t0 = time.perf_counter()
                host = next(data_iter)
                if check_batch is not None:
                    check_batch(host)
                batch = distributed.global_batch(_to_micro(host, accum), mesh, rules, batch_axis=1, strict=True)
                t1 = time.perf_counter()
                state, metrics = step_fn(state, frozen, batch)
                loss = float(distributed.to_host(metrics["loss"]))  # also the sync point that makes the timing honest
                t2 = time.perf_counter()
                if not math.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss became {loss} at step {step + 1}; stopping. The latest good checkpoint "
                        f"(step {ckpt.latest_step()}) is in {ckpt.directory}. Lower optim.lr, raise "
                        "optim.warmup_ratio or check the data around this step."
                    )
                row = {k: float(distributed.to_host(v)) for k, v in metrics.items()}
                row.update(step_time=t2 - t0, data_wait=t1 - t0, compute_time=t2 - t1)
                row["tokens_per_s"] = row["tokens"] / max(t2 - t1, 1e-9)
                if flops_per_step is not None and peak_flops:
                    row["mfu"] = flops_per_step(host) / max(t2 - t1, 1e-9) / peak_flops
                elif flops_per_token and peak_flops:
                    seq_tokens = float(np.prod(np.asarray(host["attention_mask"]).shape)) * jax.process_count() \
                        if "attention_mask" in host else row["tokens"]
                    row["mfu"] = flops_per_token * seq_tokens / max(t2 - t1, 1e-9) / peak_flops
                history.append({"step": step + 1, **row})
                if (step + 1) % tc.get("log_every", 1) == 0 or step + 1 == tc.steps:
                    writer.write_scalars(step + 1, {**row, **_data_metrics(data_iter)})
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                saved = ckpt.save(step + 1, state, data_iter if saves_iter else None)
                if eval_hook is not None and tc.get("eval_every", 0) and (step + 1) % tc.eval_every == 0:
                    scores = eval_hook(step + 1, nnx.merge(graphdef, state.params, frozen))
                    if scores:
                        writer.write_scalars(step + 1, {f"eval/{k}": v for k, v in scores.items()})
                # All processes must agree to stop: the forced save below is a collective.
                sigterm = guard.requested.is_set()
                out_of_time = deadline is not None and time.monotonic() > deadline and step + 1 < tc.steps
                if distributed.any_process(sigterm or out_of_time):
                    preempted = distributed.any_process(sigterm)  # the same answer on every process
                    if preempted:
                        log.warning("SIGTERM received: checkpointing step %d and exiting", step + 1)
                    elif lead:
                        tqdm.write(f"train.max_seconds={max_seconds:g} reached: stopping at step {step + 1} of "
                                   f"{tc.steps} (checkpointed; run again to go on)", file=sys.stderr)
                    if not saved:  # a second save of the same step raises StepAlreadyExistsError
                        ckpt.save(step + 1, state, data_iter if saves_iter else None, force=True)
                    break
            else:
                if ckpt.latest_step() != tc.steps:
                    ckpt.save(tc.steps, state, data_iter if saves_iter else None, force=True)
    finally:
        bar.close()
        ckpt.close()
        writer.close()
        guard.restore_handlers()
    return TrainResult(state, graphdef, frozen, int(state.step), history, preempted)
