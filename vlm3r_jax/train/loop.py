"""The training loop, generic over the model: it needs a model, a loss function, which params
train, and a checkpointable Grain iterator of host batches. ``launch/train.py`` wires VLM-3R in.

What it guarantees: restore-from-latest on start (params, optimizer, step, RNG, data iterator),
a checkpoint every ``save_every`` steps and on SIGTERM, a stop with a clear message on a
non-finite loss (the last good checkpoint stays the latest), step time split into data wait
and compute, tokens/s and MFU in the metrics, a tqdm bar, and an optional periodic eval hook.
Metrics stay on the device between logging points (:mod:`vlm3r_jax.train.metric_window`), so the
host dispatches the next step without waiting for the last one; the step is jitted with the same
explicit in/out shardings as the ahead-of-time compile (:func:`vlm3r_jax.train.aot.prepare_train_step`).
"""

from __future__ import annotations

import dataclasses
import logging
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
from vlm3r_jax.train.metric_window import MetricWindow, NonFiniteLossError
from vlm3r_jax.train.metrics import create_writer
from vlm3r_jax.train.optimizer import make_optimizer
from vlm3r_jax.train.state import TrainState
from vlm3r_jax.train.step import LossFn, jit_train_step, make_train_step
from vlm3r_jax.train.trainable import split_trainable

log = logging.getLogger("vlm3r_jax.train")


__all__ = ["NonFiniteLossError", "TrainResult", "train"]


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

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _data_metrics(data_iter: Any) -> dict:
    """The iterator's running totals (``data/skipped``, ``data/skipped/<kind>``, ``data/examples``),
    when it keeps them, for metrics.jsonl next to the loss."""
    fn = getattr(data_iter, "metrics", None)
    return {k: float(v) for k, v in fn().items()} if callable(fn) else {}


def _seq_tokens(host: dict) -> float | None:
    """Padded tokens of the global batch (what a FLOPs-per-token MFU counts), when the batch has a mask."""
    if "attention_mask" not in host:
        return None
    return float(np.prod(np.asarray(host["attention_mask"]).shape)) * jax.process_count()


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
    tx, schedule = make_optimizer(cfg.optim, tc.steps)
    state = TrainState.create(params, tx, seed=tc.get("seed", 0))
    # every sharding from the logical axes, as in the AOT compile: Adam moments follow their params
    state_sh = sharding.state_shardings(state, mesh, rules)
    frozen_sh = sharding.state_shardings(frozen, mesh, rules)
    state = distributed.put(state, state_sh)
    frozen = distributed.put(frozen, frozen_sh)

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
    # the batch keeps the sharding global_batch committed it to (batch axis over the data axes)
    step_fn = jit_train_step(make_train_step(graphdef, tx, loss_fn, schedule), state_sh, frozen_sh)
    log_every = max(int(tc.get("log_every", 1)), 1)
    eval_every = int(tc.get("eval_every", 0) or 0) if eval_hook is not None else 0
    lead = distributed.is_lead_process()
    writer = create_writer(workdir, tensorboard=tc.get("tensorboard", True)) if lead else _NullWriter()
    guard = PreemptionGuard()
    history: list[dict] = []
    preempted = False
    bar = tqdm(total=tc.steps, initial=start, desc="train", disable=not (progress and lead), dynamic_ncols=True)
    try:
        with sharding.use_mesh(mesh, rules):
            window = MetricWindow(flops_per_token=flops_per_token, peak_flops=peak_flops)

            def read_back(step: int, log_it: bool) -> None:
                rows = window.flush(ckpt.latest_step(), ckpt.directory)
                if rows:
                    history.extend(rows)
                    if log_it:
                        writer.write_scalars(step, {**rows[-1], **_data_metrics(data_iter)})
                        writer.flush()  # on a bucket the events reach it only here: a killed run keeps them
                    bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}")

            for i in range(start, tc.steps):
                t0 = time.perf_counter()
                host = next(data_iter)
                if check_batch is not None:
                    check_batch(host)
                batch = distributed.global_batch(_to_micro(host, accum), mesh, rules, batch_axis=1, strict=True)
                t1 = time.perf_counter()
                state, metrics = step_fn(state, frozen, batch)  # dispatched; not waited for
                window.add(i + 1, metrics, t1 - t0,
                           flops=flops_per_step(host) if flops_per_step is not None and peak_flops else None,
                           seq_tokens=_seq_tokens(host) if flops_per_token else None)
                evals = bool(eval_every) and (i + 1) % eval_every == 0
                logs = (i + 1) % log_every == 0 or i + 1 == tc.steps
                if evals or logs or ckpt.should_save(i + 1):
                    read_back(i + 1, logs)  # before anything is saved: a non-finite loss stops here
                bar.update(1)
                saved = ckpt.save(i + 1, state, data_iter if saves_iter else None)
                if evals:
                    scores = eval_hook(i + 1, nnx.merge(graphdef, state.params, frozen))
                    if scores:
                        writer.write_scalars(i + 1, {f"eval/{k}": v for k, v in scores.items()})
                # All processes must agree to stop: the forced save below is a collective.
                sigterm = guard.requested.is_set()
                out_of_time = deadline is not None and time.monotonic() > deadline and i + 1 < tc.steps
                stop = distributed.any_process(sigterm or out_of_time)
                if stop:
                    preempted = distributed.any_process(sigterm)  # the same answer on every process
                    if preempted:
                        log.warning("SIGTERM received: checkpointing step %d and exiting", i + 1)
                    elif lead:
                        tqdm.write(f"train.max_seconds={max_seconds:g} reached: stopping at step {i + 1} of "
                                   f"{tc.steps} (checkpointed; run again to go on)", file=sys.stderr)
                    read_back(i + 1, True)
                    if not saved:  # a second save of the same step raises StepAlreadyExistsError
                        ckpt.save(i + 1, state, data_iter if saves_iter else None, force=True)
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
