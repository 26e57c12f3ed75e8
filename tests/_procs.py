"""Helpers for tests that run several JAX processes on localhost (jax.distributed over CPU)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(script: str, *args: object) -> subprocess.Popen:
    """Starts ``python tests/<script> args...`` with this repo on the path and without the
    8-fake-device flags of conftest (each worker script sets its own device count)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = ROOT
    cmd = [sys.executable, os.path.join(ROOT, "tests", script), *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_all(procs: list[subprocess.Popen], timeout: float = 400) -> list[str]:
    """Waits for every process (killing stragglers), asserts exit 0, returns their outputs."""
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-3000:]
    return outs
