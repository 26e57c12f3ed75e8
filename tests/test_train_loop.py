"""The generic train loop: kill -9 mid-run (during an async checkpoint write) and restart gives
exactly the uninterrupted loss sequence; NaN stops with a clear message."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "toy_train.py")


def _run(workdir, steps, crash_at=None):
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    args = [sys.executable, SCRIPT, str(workdir), str(steps)] + ([str(crash_at)] if crash_at else [])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def _losses(workdir):
    rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    by_step = {}
    for r in (r for r in rows if "loss" in r):  # a resumed run re-logs later steps; the last row wins
        by_step[r["step"]] = r["loss"]
    return [by_step[s] for s in sorted(by_step)]


def test_kill9_and_resume_matches_uninterrupted(tmp_path):
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    r = _run(full, 8)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _run(crashed, 8, crash_at=5)
    assert r.returncode == -9, r.stderr[-2000:]
    r = _run(crashed, 8)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stderr
    a, b = _losses(full), _losses(crashed)
    assert len(a) == len(b) == 8
    np.testing.assert_array_equal(np.array(a), np.array(b))


def test_nonfinite_loss_stops_with_message(tmp_path, monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import toy_train

    from vlm3r_jax.train.loop import NonFiniteLossError

    monkeypatch.setattr(toy_train, "loss_fn", lambda m, b: (np.float32(np.nan), np.float32(1.0)))
    with pytest.raises(NonFiniteLossError, match="latest good checkpoint"):
        toy_train.main(str(tmp_path), 3)


def test_time_budget_checkpoints_and_stops(tmp_path, monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import toy_train

    cfg = toy_train.config(6)
    cfg.train.max_seconds = 1e-6  # over budget after the first step
    monkeypatch.setattr(toy_train, "config", lambda steps: cfg)
    r = toy_train.main(str(tmp_path), 6)
    assert (r.last_step, r.preempted) == (1, False)
    assert sorted(os.listdir(tmp_path / "checkpoints"))[-1] == "1"
    cfg.train.max_seconds = 0.0  # off: the re-run resumes and finishes
    assert toy_train.main(str(tmp_path), 6).last_step == 6


class _CountingIter:
    """The toy iterator plus the running skip totals a VideoBatchIterator keeps."""

    def __init__(self, it):
        self.it, self.n = it, 0

    def __next__(self):
        self.n += 1
        return next(self.it)

    def metrics(self):
        return {"data/skipped": self.n // 2, "data/skipped/corrupt_video": self.n // 2, "data/examples": 4 * self.n}


def test_skip_counts_go_to_metrics_jsonl(tmp_path, monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import toy_train

    from vlm3r_jax.train import loop

    real = loop.train
    monkeypatch.setattr(toy_train, "train", lambda cfg, wd, m, lf, it, **kw: real(cfg, wd, m, lf, _CountingIter(it), **kw))
    toy_train.main(str(tmp_path), 3)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    last = [r for r in rows if "loss" in r][-1]
    assert (last["data/skipped"], last["data/skipped/corrupt_video"], last["data/examples"]) == (1, 1, 12)


def test_unwritable_workdir_fails_before_the_model_is_built(tmp_path, monkeypatch):
    from vlm3r_jax.train import vlm3r_task

    monkeypatch.setattr(vlm3r_task, "build_model", lambda cfg: pytest.fail("built the model first"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match=r"workdir .*file/run is not a writable directory"):
        vlm3r_task.run(None, str(blocker / "run"))


def _toy(monkeypatch, steps, **train):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import toy_train

    cfg = toy_train.config(steps)
    cfg.train.update(train)
    monkeypatch.setattr(toy_train, "config", lambda steps: cfg)
    return toy_train


def test_metrics_are_read_once_per_log_window_with_the_same_losses(tmp_path, monkeypatch):
    from vlm3r_jax import sharding
    from vlm3r_jax.train import metric_window

    flushes = []
    real = metric_window.MetricWindow.flush
    monkeypatch.setattr(metric_window.MetricWindow, "flush",
                        lambda self, *a: flushes.append(len(self.pending)) or real(self, *a))
    every = _toy(monkeypatch, 8, log_every=1, save_every=100, eval_every=0).main(str(tmp_path / "a"), 8)
    assert flushes == [1] * 8
    flushes.clear()
    windowed = _toy(monkeypatch, 8, log_every=4, save_every=100, eval_every=0).main(str(tmp_path / "b"), 8)
    # three host syncs for eight steps: Orbax checkpoints step 1 (its first save), then every 4th step logs
    assert flushes == [1, 3, 4]
    assert [r["step"] for r in windowed.history] == list(range(1, 9))
    np.testing.assert_array_equal([r["loss"] for r in every.history], [r["loss"] for r in windowed.history])
    rows = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert [r["step"] for r in rows if "loss" in r] == [4, 8]
    # the loop's state carries the shardings the AOT compile derives from the logical axes
    mesh = sharding.mesh_from_config(toy_train_cfg_mesh())
    want = sharding.state_shardings(windowed.state.params, mesh)
    got = jax.tree_util.tree_map(lambda x: x.sharding, windowed.state.params)
    assert jax.tree_util.tree_leaves(got) == jax.tree_util.tree_leaves(want)


def toy_train_cfg_mesh():
    import toy_train

    return toy_train.config(1).mesh


def test_nonfinite_loss_inside_a_window_names_its_step_and_saves_nothing(tmp_path, monkeypatch):
    from vlm3r_jax.train.loop import NonFiniteLossError

    toy = _toy(monkeypatch, 6, log_every=3, save_every=2, eval_every=0)
    monkeypatch.setattr(toy, "loss_fn", lambda m, b: (np.float32(np.nan), np.float32(1.0)))
    with pytest.raises(NonFiniteLossError, match=r"at step 1;.*latest good checkpoint \(step None\)"):
        toy.main(str(tmp_path), 6)
    assert not os.path.isdir(tmp_path / "checkpoints") or not [d for d in os.listdir(tmp_path / "checkpoints")
                                                               if d.isdigit()]
