"""One process of the multi-host eval test (tests/test_multihost_eval.py): 4 CPU devices in total,
as 1 process or split over NUM_PROCESSES processes; the text-only tiny VLM-3R on a
(data=2, tensor=2) mesh, records from the benchmark directory DATA_DIR.

usage: python tests/multihost_eval.py DATA_DIR WORKDIR PROCESS_ID NUM_PROCESSES PORT
"""

import os
import sys

N_DEVICES = 4

if __name__ == "__main__":
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={N_DEVICES // int(sys.argv[4])}"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(data: str, workdir: str, pid: int, nproc: int, port: int) -> None:
    from vlm3r_jax.train import distributed

    if nproc > 1:
        distributed.initialize_from_env(coordinator_address=f"localhost:{port}", num_processes=nproc, process_id=pid)
    import tempfile

    import jax
    from test_eval_sharded import _tiny_handle

    from vlm3r_jax import sharding
    from vlm3r_jax.eval import records, runner
    from vlm3r_jax.eval.sharded import ShardedVLM3RPredictor

    assert jax.process_count() == nproc and jax.device_count() == N_DEVICES

    class Dirs:  # what _tiny_handle needs of pytest's tmp_path_factory
        def mktemp(self, name):
            return tempfile.mkdtemp(prefix=name)

    handle = _tiny_handle(Dirs())  # same seed on every process: identical host weights
    pred = ShardedVLM3RPredictor(handle, batch_size=3, mesh=sharding.make_mesh({"data": 2, "tensor": 2}),
                                 max_new_tokens=4, text_only=True, length_buckets=(192, 256))
    recs = records.load_records(data, "vsibench")
    writer = jax.process_index() == 0
    res = runner.run_eval(recs, pred, workdir, 3, check_videos="none", progress=False, print_table=False,
                          writer=writer)
    assert (res is not None) == writer
    print("done", jax.process_index(), flush=True)


if __name__ == "__main__":
    a = sys.argv
    main(a[1], a[2], int(a[3]), int(a[4]), int(a[5]))
