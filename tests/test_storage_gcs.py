"""URIs end to end against a local GCS emulator (``gcp-storage-emulator``, started by the test;
etils.epath reaches it through gcsfs and ``STORAGE_EMULATOR_HOST``, Orbax through tensorstore and
``TENSORSTORE_GCS_HTTP_URL``): a training run killed with SIGKILL and resumed from the bucket gives
the uninterrupted losses; metrics, TensorBoard events, the geometry cache and the eval store
live in the bucket; an unwritable location fails in one line. Skipped without the ``gcs`` extra
(``pip install gcsfs gcp-storage-emulator``)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")

from _gcs import BUCKET, ROOT  # noqa: E402 - the ``gcs`` fixture (conftest.py) starts the emulator


def _run(env, workdir, steps, crash_at=None):
    env = {**os.environ, **env, "PYTHONPATH": ROOT, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    args = [sys.executable, os.path.join(ROOT, "tests", "toy_train.py"), workdir, str(steps)]
    return subprocess.run(args + ([str(crash_at)] if crash_at else []), env=env, capture_output=True, text=True,
                          timeout=300)


def _losses(workdir):
    from vlm3r_jax.train.metrics import read_metrics

    by_step = {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}  # the last row wins
    return [by_step[s] for s in sorted(by_step)]


@pytest.mark.slow  # ~80 s: three training subprocesses
def test_kill9_and_resume_from_the_bucket_matches_uninterrupted(gcs):
    from etils import epath

    full, crashed = f"gs://{BUCKET}/full", f"gs://{BUCKET}/crashed"
    r = _run(gcs, full, 6)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _run(gcs, crashed, 6, crash_at=4)
    assert r.returncode == -9, r.stderr[-2000:]
    r = _run(gcs, crashed, 6)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed from {crashed}/checkpoints" in r.stderr
    assert not os.path.exists("gs:")  # nothing went to a local gs:/ folder
    a, b = _losses(full), _losses(crashed)
    assert len(a) == len(b) == 6
    np.testing.assert_array_equal(a, b)
    steps = sorted(p.name for p in epath.Path(crashed, "checkpoints").iterdir())
    assert "6" in steps


def test_metrics_and_tensorboard_in_the_bucket(gcs):
    from vlm3r_jax.train.metrics import create_writer, read_metrics, read_tensorboard

    workdir = f"gs://{BUCKET}/metrics"
    w = create_writer(workdir)
    for step in (1, 2):
        w.write_scalars(step, {"loss": 1.0 / step, "lr": 0.1})
    w.flush()
    w.close()
    assert [r["loss"] for r in read_metrics(workdir)] == [1.0, 0.5]
    assert read_tensorboard(workdir)["loss"] == [(1, 1.0), (2, 0.5)]


def test_geometry_cache_and_eval_outputs_in_the_bucket(gcs, tmp_path):
    from data_pipeline import geometry_cache
    from vlm3r_jax.eval import report

    video = tmp_path / "v.mp4"
    video.write_bytes(os.urandom(5000))
    key = geometry_cache.cache_key("fp", 2, 32, 2.0)
    cache = f"gs://{BUCKET}/cache"
    geometry_cache.write_manifest(cache, key)
    geometry_cache.check_manifest(cache, key)
    tok = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
    entry = geometry_cache.entry_path(cache, "v.mp4")
    geometry_cache.save_entry(entry, tok, key, geometry_cache.video_fingerprint(str(video)), "float32")
    np.testing.assert_array_equal(geometry_cache.read_entry(entry, key, str(video)), tok)
    with pytest.raises(geometry_cache.GeometryCacheError, match="no geometry cache entry for this video"):
        geometry_cache.read_entry_unchecked(geometry_cache.entry_path(cache, "nowhere.mp4"))

    from vlm3r_jax.eval.store import Appender, read_samples

    out = f"gs://{BUCKET}/eval"
    report.write_json(f"{out}/scores.json", {"scores": {"overall": 1.5}})
    assert report.load_scores(out) == {"overall": 1.5}
    app = Appender(f"{out}/samples.jsonl")
    app.write({"id": "a", "prediction": "1"})
    app.close()
    Appender(f"{out}/samples.jsonl").write({"id": "b", "prediction": "2"})  # a resumed run appends
    assert sorted(read_samples(f"{out}/samples.jsonl")) == ["a", "b"]


def test_an_unwritable_location_is_one_line(gcs):
    from vlm3r_jax import storage

    with pytest.raises(OSError) as e:
        storage.check_writable("gs://no-such-bucket-here/run")
    assert "no-such-bucket-here" in str(e.value) and "\n" not in str(e.value)
    r = subprocess.run([sys.executable, "-m", "launch.train", "--config", "configs/demo_tiny.py", "--workdir",
                        "gs://no-such-bucket-here/run"], cwd=ROOT, env={**os.environ, **gcs, "PYTHONPATH": ROOT},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "error: workdir gs://no-such-bucket-here/run is not a writable directory" in r.stderr
