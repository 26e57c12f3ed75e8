"""Orbax round trip of the train state + Grain iterator, keep-last-K, and crash safety."""

import os
import shutil

import grain
import jax
import ml_collections
import numpy as np
from flax import nnx

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
