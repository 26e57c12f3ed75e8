"""Multi-host eval on localhost: 2 JAX processes x 2 CPU devices run the sharded text-only
predictor SPMD (same record stream, each process places its own shards of the padded batch and
of the tensor-sharded params; process 0 writes); the samples equal one process with 4 devices."""

import pytest
from _procs import launch, wait_all
from test_eval_runner import make_bench

from vlm3r_jax.eval import runner


def _launch(data, work, pid, nproc, port):
    return launch("multihost_eval.py", data, work, pid, nproc, port)


@pytest.mark.slow
def test_two_process_eval_equals_one_process(tmp_path):
    portpicker = pytest.importorskip("portpicker")
    data = tmp_path / "bench"
    make_bench(str(data), per_type=1, videos=False)  # 10 answerable + 4 bad records; batches of 3 -> 4 rows
    port = portpicker.pick_unused_port()
    procs = [_launch(data, tmp_path / "one", 0, 1, 0)]
    procs += [_launch(data, tmp_path / "two", i, 2, port) for i in range(2)]
    wait_all(procs)
    one = runner.read_samples(str(tmp_path / "one" / runner.SAMPLES_FILE))
    two = runner.read_samples(str(tmp_path / "two" / runner.SAMPLES_FILE))
    assert set(one) == set(two) and len(one) == 14
    assert {i: x["prediction"] for i, x in one.items()} == {i: x["prediction"] for i, x in two.items()}
    assert sum(x["status"] == "ok" for x in two.values()) == 11  # text only: the missing video is no failure
