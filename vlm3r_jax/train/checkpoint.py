"""Orbax checkpointing of the train state together with the Grain iterator state.

One ``ocp.CheckpointManager`` with two named items, ``state`` (the :class:`TrainState` pytree:
trainable params, optimizer state, step, RNG) and ``data_iter`` (Grain's iterator state), so a
restored run continues with exactly the batches it would have seen. Orbax writes each step to a
temporary directory and renames it when complete: a crash or ``kill -9`` mid-write leaves the
previous checkpoint as the latest restorable one.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from vlm3r_jax import storage


class Checkpointer:
    """Save every ``save_every`` steps (or when forced), keep the last ``keep``, async by default."""

    def __init__(self, directory: str, *, save_every: int = 100, keep: int = 3, async_save: bool = True):
        self.directory = storage.absolute(directory)  # a URI (gs://...) goes to Orbax untouched
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(int(save_every), 1),
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter: Any = None, *, force: bool = False) -> bool:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        return self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state: Any, data_iter: Any = None, step: int | None = None) -> Any:
        """Restores into ``abstract_state`` (arrays or ``jax.ShapeDtypeStruct`` with shardings);
        restores ``data_iter`` in place when given. Returns the state."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` (with sharding) for every array of ``tree``."""
    def one(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree_util.tree_map(one, tree)


class PreemptionGuard:
    """Turns SIGTERM (TPU preemption, SLURM, ``kill``) into a flag the loop polls, so it can write
    a checkpoint and exit cleanly instead of dying mid-step."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.requested = threading.Event()
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for s in signals:
                self._previous[s] = signal.signal(s, self._handler)

    def _handler(self, signum, frame):  # noqa: ARG002
        self.requested.set()

    def restore_handlers(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
