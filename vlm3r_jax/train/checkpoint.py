"""Orbax checkpointing of the train state together with the Grain iterator state.

One ``ocp.CheckpointManager`` with two named items, ``state`` (the :class:`TrainState` pytree:
trainable params, optimizer state, step, RNG) and ``data_iter`` (Grain's iterator state), so a
restored run continues with exactly the batches it would have seen. Orbax writes each step to a
temporary directory and renames it when complete: a crash or ``kill -9`` mid-write leaves the
previous checkpoint as the latest restorable one.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from vlm3r_jax import storage

log = logging.getLogger(__name__)


class CheckpointWriteError(OSError):
    """A save failed (disk full, quota, permissions); earlier steps are untouched."""


def _write_error(exc: BaseException) -> BaseException | None:
    """The file-system error behind ``exc`` (or its causes): an OSError from Python-side writes,
    or TensorStore's ValueError carrying ``os_error_code`` (ENOSPC, EFBIG, EDQUOT...); else None."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) or "os_error_code" in str(e):
            return e
        stack += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
    return None


class _QuietWriteErrors(logging.Filter):
    """Drops Orbax's and asyncio's own reports (one traceback per pending write, ~150 on a full
    disk) of a failed write: the error reaches the caller of save/wait as one
    :class:`CheckpointWriteError`, which the command-line tools print as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.exc_info[1] is not None and _write_error(record.exc_info[1]))


_QUIET = _QuietWriteErrors()


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
        self._failed: CheckpointWriteError | None = None
        for name in ("absl", "asyncio"):
            if _QUIET not in logging.getLogger(name).filters:
                logging.getLogger(name).addFilter(_QUIET)

    def _raise(self, e: Exception) -> None:
        """Re-raises ``e``, as one CheckpointWriteError when a file write failed."""
        cause = _write_error(e)
        if cause is None:
            raise e
        why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause).split(": ")[-1]
        self._failed = CheckpointWriteError(
            getattr(cause, "errno", None), f"saving a checkpoint to {self.directory} failed ({why}); the earlier "
            f"checkpoints are intact (latest: step {self.manager.latest_step()}). Free disk space (or point "
            "--workdir elsewhere) and run again")
        raise self._failed from None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Whether :meth:`save` of ``step`` (unforced) would write a checkpoint."""
        return self.manager.should_save(int(step))

    def save(self, step: int, state: Any, data_iter: Any = None, *, force: bool = False) -> bool:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        try:
            return self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)
        except Exception as e:  # the previous async save's failure surfaces here
            self._raise(e)

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

    def restore_newest_good(self, abstract_state: Any, data_iter: Any = None) -> tuple[Any, list[str]]:
        """Restores the newest step that restores, newest first. A step that fails (a truncated or
        corrupt file) is moved aside to ``<dir>/<step>.unrestorable-<time>`` (kept for inspection,
        and so later saves of that step number do not collide) and the next older one is tried.
        Returns (state, one line per skipped step); raises the last error if no step restores."""
        skipped: list[str] = []
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        for i, step in enumerate(steps):
            try:
                state = self.restore(abstract_state, data_iter, step=step)
            except Exception as e:  # Orbax/TensorStore raise many types for a damaged step
                if i == len(steps) - 1:
                    raise RuntimeError(f"no checkpoint in {self.directory} restores; the oldest, step {step}, "
                                       f"fails with {_first_line(e)}") from e
                line = (f"checkpoint step {step} in {self.directory} cannot be restored ({_first_line(e)}); "
                        f"moved aside, resuming from step {steps[i + 1]} instead")
                log.warning(line)
                skipped.append(line)
                self._move_aside(step)
                continue
            return state, skipped
        raise AssertionError("unreachable")

    def _move_aside(self, step: int) -> None:
        src = storage.join(self.directory, str(step))
        # through epath, so a step on a bucket is moved too (on an object store: copied, then deleted)
        if jax.process_index() == 0 and storage.isdir(src):
            epath.Path(src).rename(f"{src}.unrestorable-{int(time.time())}")
        self.manager.reload()

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            self._raise(e)

    def close(self) -> None:
        """Waits for the last save and closes; a write error already raised is not raised again
        (close runs in ``finally`` blocks, where it would hide the first report)."""
        already = self._failed is not None
        try:
            self.wait()
        except CheckpointWriteError:
            if not already:
                raise
        finally:
            try:
                self.manager.close()
            except Exception as e:
                if _write_error(e) is None:
                    raise


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


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
