"""Grain workers (and multiprocessing's resource tracker) exit when their parent is killed -9."""

import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PARENT = r"""
import os, signal, sys
import grain
from data_pipeline.pipeline import ensure_absl_flags
from data_pipeline.worker_lifetime import exit_with_parent

if __name__ == "__main__":
    ensure_absl_flags()
    ds = grain.MapDataset.range(10_000).map(lambda i: i * 2).to_iter_dataset()
    it = iter(ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=2, per_worker_buffer_size=2),
                             worker_init_fn=exit_with_parent))
    next(it)
    me = str(os.getpid())
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                kids.append(d)
    print(" ".join(kids), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    # files, not pipes: surviving workers would hold a pipe open and hang the wait
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        rc = subprocess.run([sys.executable, str(script)], cwd=ROOT, stdout=out, stderr=err, timeout=120,
                            env=dict(os.environ, PYTHONPATH=ROOT)).returncode
    assert rc == -signal.SIGKILL, (tmp_path / "err").read_text()[-2000:]
    kids = [int(p) for p in (tmp_path / "out").read_text().split()]
    assert len(kids) >= 2, kids  # the two workers (+ the resource tracker)
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in kids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in kids if _alive(p)]
    for p in left:  # never leave strays behind, even when the test fails
        os.kill(p, signal.SIGKILL)
    assert not left, f"still alive after the parent's kill -9: {left}"
