"""Training writes TensorBoard events without TensorFlow (tensorboardX): a tiny run's event file
reads back with the loop's scalars, the same values as metrics.jsonl."""

import grain
import pytest
from flax import nnx
from toy_train import ToyLM, config, loss_fn, make_batch

from vlm3r_jax.train.loop import train
from vlm3r_jax.train.metrics import read_metrics, read_tensorboard


def test_tiny_run_writes_tensorboard_scalars(tmp_path):
    cfg = config(3)
    cfg.train.tensorboard = True
    it = iter(grain.MapDataset.range(100).map(make_batch).to_iter_dataset())
    train(cfg, str(tmp_path), ToyLM(nnx.Rngs(0)), loss_fn, it, flops_per_token=1e3, peak_flops=1e12, progress=False)
    events = read_tensorboard(str(tmp_path))
    for tag in ("loss", "lr", "grad_norm", "step_time", "data_wait", "mfu"):
        assert [s for s, _ in events[tag]] == [1, 2, 3], tag
    jsonl = [r for r in read_metrics(str(tmp_path)) if "loss" in r]
    assert [v for _, v in events["loss"]] == pytest.approx([r["loss"] for r in jsonl], rel=1e-6)
    assert all(v > 0 for _, v in events["mfu"])


def test_a_killed_run_leaves_its_events_on_the_bucket(gcs, tmp_path, monkeypatch):
    """On a gs:// work dir the events are written locally and copied on flush: each logged step
    flushes, so a run that never reaches close (kill -9, here: close skipped) still has them there."""
    from _gcs import BUCKET

    from vlm3r_jax.train import metrics

    monkeypatch.setattr(metrics.TensorBoardWriter, "close", lambda self: self._w.close())  # no final copy
    cfg = config(3)
    cfg.train.tensorboard = True
    workdir = f"gs://{BUCKET}/killed-run"
    it = iter(grain.MapDataset.range(100).map(make_batch).to_iter_dataset())
    train(cfg, workdir, ToyLM(nnx.Rngs(0)), loss_fn, it, progress=False)
    assert [s for s, _ in read_tensorboard(workdir)["loss"]] == [1, 2, 3]
