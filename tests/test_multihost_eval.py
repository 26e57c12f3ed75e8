"""Multi-host eval on localhost: 2 JAX processes x 2 CPU devices run the sharded text-only
predictor SPMD (same record stream, each process places its own shards of the padded batch and
of the tensor-sharded params; process 0 writes); the samples equal one process with 4 devices."""

import os
import subprocess
import sys

import pytest
from test_eval_runner import make_bench

from vlm3r_jax.eval import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "multihost_eval.py")


def _launch(data, work, pid, nproc, port):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = ROOT
    args = [sys.executable, SCRIPT, str(data), str(work), str(pid), str(nproc), str(port)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_process_eval_equals_one_process(tmp_path):
    portpicker = pytest.importorskip("portpicker")
    data = tmp_path / "bench"
    make_bench(str(data), per_type=1, videos=False)  # 10 answerable + 4 bad records; batches of 3 -> 4 rows
    port = portpicker.pick_unused_port()
    procs = [_launch(data, tmp_path / "one", 0, 1, 0)]
    procs += [_launch(data, tmp_path / "two", i, 2, port) for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=400)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-3000:]
    one = runner.read_samples(str(tmp_path / "one" / runner.SAMPLES_FILE))
    two = runner.read_samples(str(tmp_path / "two" / runner.SAMPLES_FILE))
    assert set(one) == set(two) and len(one) == 14
    assert {i: x["prediction"] for i, x in one.items()} == {i: x["prediction"] for i, x in two.items()}
    assert sum(x["status"] == "ok" for x in two.values()) == 11  # text only: the missing video is no failure
