"""Orbax round trip of the train state + Grain iterator, keep-last-K, and crash safety."""

import os
import shutil

import grain
import jax
import ml_collections
import numpy as np
from flax import nnx

from vlm3r_jax import storage
from vlm3r_jax.layers import Linear
from vlm3r_jax.train.checkpoint import Checkpointer, abstract_like
from vlm3r_jax.train.optimizer import make_optimizer
from vlm3r_jax.train.state import TrainState


def _state(seed=0):
    lin = Linear(3, 5, axes=("embed", "mlp"), rngs=nnx.Rngs(seed))
    _, params = nnx.split(lin)
    tx, _ = make_optimizer(ml_collections.ConfigDict(dict(lr=1e-3, warmup_ratio=0.0, max_grad_norm=1.0)), 10)
    return TrainState.create(params, tx, seed=seed)


def _iter():
    return iter(grain.MapDataset.range(100).shuffle(seed=3).batch(4).to_iter_dataset())


def test_roundtrip_state_and_data_iterator(tmp_path):
    ck = Checkpointer(str(tmp_path), save_every=1, keep=2, async_save=True)
    state = _state(1)
    it = _iter()
    for _ in range(3):
        next(it)
    ck.save(7, state, it)
    ck.wait()
    expected_next = [next(it).tolist() for _ in range(2)]

    fresh_it = _iter()
    restored = ck.restore(abstract_like(_state(2)), fresh_it)
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [next(fresh_it).tolist() for _ in range(2)] == expected_next
    ck.close()


def test_keep_last_k_and_interrupted_write_falls_back(tmp_path):
    ck = Checkpointer(str(tmp_path), save_every=1, keep=2, async_save=False)
    for step in (1, 2, 3):
        ck.save(step, _state(step))
    assert sorted(ck.manager.all_steps()) == [2, 3]
    ck.close()
    # a write interrupted mid-way leaves only a temporary directory: it is not a checkpoint
    shutil.copytree(tmp_path / "3", tmp_path / "4.orbax-checkpoint-tmp-1234")
    ck2 = Checkpointer(str(tmp_path), save_every=1, keep=2)
    assert ck2.latest_step() == 3
    restored = ck2.restore(abstract_like(_state(0)))
    assert int(restored.step) == 0 and os.path.isdir(tmp_path / "3")
    ck2.close()


def _truncate_largest_file(step_dir):
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
    big = max(files, key=os.path.getsize)
    with open(big, "r+b") as f:
        f.truncate(os.path.getsize(big) // 2)


def test_corrupt_latest_step_falls_back_to_the_newest_good_one(tmp_path):
    ck = Checkpointer(str(tmp_path), save_every=1, keep=3, async_save=False)
    for step in (1, 2, 3):
        ck.save(step, _state(step))
    ck.close()
    for step in (3, 2):
        _truncate_largest_file(tmp_path / str(step))
    ck2 = Checkpointer(str(tmp_path), save_every=1, keep=3, async_save=False)
    restored, skipped = ck2.restore_newest_good(abstract_like(_state(0)))
    for a, b in zip(jax.tree_util.tree_leaves(_state(1).params), jax.tree_util.tree_leaves(restored.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(skipped) == 2 and "step 3" in skipped[0] and "resuming from step 1" in skipped[1]
    assert ck2.latest_step() == 1 and sorted(os.listdir(tmp_path))[:1] == ["1"]
    assert ck2.save(2, _state(2), force=True) and ck2.latest_step() == 2  # the step number is free again
    ck2.close()


def test_corrupt_step_on_a_bucket_is_moved_aside(gcs):
    from _gcs import BUCKET
    from etils import epath

    directory = f"gs://{BUCKET}/ckpt-move-aside"
    ck = Checkpointer(directory, save_every=1, keep=3, async_save=False)
    for step in (1, 2):
        ck.save(step, _state(step))
    ck.close()
    big = max((epath.Path(directory, "2", f) for f in storage.walk_files(f"{directory}/2")),
              key=lambda p: p.stat().length)
    big.write_bytes(big.read_bytes()[: big.stat().length // 2])
    ck2 = Checkpointer(directory, save_every=1, keep=3, async_save=False)
    _, skipped = ck2.restore_newest_good(abstract_like(_state(0)))
    assert len(skipped) == 1 and "step 2" in skipped[0]
    names = sorted(p.name for p in epath.Path(directory).iterdir())
    assert "2" not in names and any(n.startswith("2.unrestorable-") for n in names), names
    assert ck2.latest_step() == 1
    ck2.close()


_FULL_DISK = r"""
import resource, signal, sys
import numpy as np
import jax.numpy as jnp
from launch import cli
from vlm3r_jax.train.checkpoint import Checkpointer

def main(argv):
    ck = Checkpointer(sys.argv[1], save_every=1, keep=3, async_save=True)
    state = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((64, 1024)), jnp.float32)}
    ck.save(1, state)
    ck.wait()
    # from now on no file may grow past 64 KB (EFBIG, as ENOSPC on a full disk): the 256 KB array fails
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        for step in (2, 3):
            ck.save(step, state)
        ck.wait()
    finally:
        ck.close()

sys.argv = sys.argv[:2]
cli.run(main, config_flag=None)
"""


def test_failed_save_is_one_line_and_keeps_earlier_steps(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path / "ck")], cwd=root, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, PYTHONPATH=root))
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith(("error:", "E1", "E0"))]
    assert len(errors) == 1 and "earlier checkpoints are intact (latest: step 1)" in errors[0], r.stderr[-3000:]
    ck = Checkpointer(str(tmp_path / "ck"))
    assert ck.latest_step() == 1
    restored = ck.restore({"w": jax.ShapeDtypeStruct((64, 1024), np.float32)})
    assert restored["w"].shape == (64, 1024)
    ck.close()
