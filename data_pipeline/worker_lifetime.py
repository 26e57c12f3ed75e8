"""Grain worker processes that do not outlive the process that started them.

A ``kill -9`` of a training or eval run never lets Grain shut its workers down; without this they
stay alive (each holding its decoders and buffers, ~240 MB) together with multiprocessing's
resource tracker, which waits for their pipes to close. Every worker runs a daemon thread that
exits the worker as soon as its parent is gone (the parent pid changes when the kernel reparents
it). Polling works whatever thread created the worker, unlike ``PR_SET_PDEATHSIG``, which fires
when that *thread* exits.
"""

from __future__ import annotations

import os
import threading
import time

POLL_SECONDS = 0.5


def _watch(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(0)  # no cleanup: the parent that would consume it is gone
        time.sleep(POLL_SECONDS)


def exit_with_parent(worker_index: int = 0, worker_count: int = 0) -> None:  # noqa: ARG001
    """A Grain ``worker_init_fn``: start watching the parent from inside the worker."""
    parent = os.getppid()
    if parent == 1:  # already orphaned before we got here
        os._exit(0)
    threading.Thread(target=_watch, args=(parent,), daemon=True, name="exit-with-parent").start()
