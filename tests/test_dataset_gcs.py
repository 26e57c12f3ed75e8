"""Dataset roots on ``gs://`` against the local GCS emulator (the ``gcs`` fixture, tests/_gcs.py): a
tiny dataset uploaded to the bucket gives the same pipeline batches (in-process and from two Grain
workers), the same eval scores and the same geometry cache as its local copy; paths that leave the
root are refused for URIs too; a missing video object or bucket is one line naming the URI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_eval_runner import make_bench
from test_pipeline_data import SMALL, _conv, _digest
from test_tokenizer import build_small_tokenizer

pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")

from _gcs import BUCKET  # noqa: E402

from data_pipeline.pipeline import PipelineConfig, make_iterator  # noqa: E402
from data_pipeline.sources import LlavaJsonSource, path_under_root  # noqa: E402
from data_pipeline.synthetic_video import write_barcode_frames_dir, write_barcode_video  # noqa: E402
from data_pipeline.tokenizer import QwenTokenizer  # noqa: E402
from data_pipeline.video import VideoError, load_video  # noqa: E402
from vlm3r_jax import storage  # noqa: E402


@pytest.fixture(scope="module")
def dataset(gcs, tmp_path_factory):
    """A local training dataset (videos + JSONL with a missing-video and an escaping record) and
    its copy at ``gs://BUCKET/data``."""
    d = tmp_path_factory.mktemp("data")
    recs = []
    for i in range(4):
        write_barcode_video(str(d / "videos" / f"scene{i}.mp4"), 9 + 5 * i, size=(48, 64), gop=6)
        recs.append({"id": f"g{i}", "video": f"videos/scene{i}.mp4", "conversations": _conv(f"How many? {i}", str(i))})
    recs.append({"id": "b_missing", "video": "videos/missing.mp4", "conversations": _conv("q", "1")})
    recs.append({"id": "b_escape", "video": "../secret.mp4", "conversations": _conv("q", "1")})
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    write_barcode_frames_dir(str(d / "frames"), 6, size=(48, 64))
    uri = f"gs://{BUCKET}/data"
    storage.copy_tree(str(d), uri)
    return {"local": str(d), "uri": uri, "tok": QwenTokenizer.from_dir(build_small_tokenizer(str(d.parent / "tok")))}


@pytest.fixture(autouse=True)
def _fetch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM3R_FETCH_CACHE", str(tmp_path / "fetch-cache"))  # Grain workers inherit it


def _batches(root: str, tok, workers: int = 0):
    src = LlavaJsonSource(storage.join(root, "train.jsonl"), root)
    cfg = PipelineConfig(**{**SMALL, "worker_count": workers, "num_epochs": 1, "shuffle": False})
    skipped = []
    with make_iterator(src, tok, cfg, shard=(0, 1), log_fn=skipped.append) as it:
        return list(it), [s for s in skipped if s.startswith("data: skipped")]


@pytest.mark.parametrize("workers", [0, 2])
def test_pipeline_batches_from_the_bucket_equal_the_local_copy(dataset, workers, tmp_path):
    local, _ = _batches(dataset["local"], dataset["tok"], workers)
    remote, skipped = _batches(dataset["uri"], dataset["tok"], workers)
    assert [_digest(b) for b in remote] == [_digest(b) for b in local]
    assert sum(int(b["valid"].sum()) for b in remote) == 4
    # the missing video and the escaping path are skipped, each with one line naming the URI
    assert len(skipped) == 2 and all("\n" not in s for s in skipped)
    assert any(f"{dataset['uri']}/videos/missing.mp4: no such object" in s for s in skipped), skipped
    assert any("bad_path" in s and f"video root {dataset['uri']}" in s for s in skipped), skipped
    assert os.listdir(tmp_path / "fetch-cache")  # decoded from the bounded local copies


def test_video_and_frame_folder_from_the_bucket(dataset):
    for rel in ("videos/scene2.mp4", "frames"):
        a = load_video(os.path.join(dataset["local"], rel), 5)
        b = load_video(f"{dataset['uri']}/{rel}", 5)
        np.testing.assert_array_equal(a.frames, b.frames)
        assert (a.total_frames, a.fps) == (b.total_frames, b.fps)


def test_a_missing_video_object_or_bucket_is_one_line(dataset):
    for uri, why in ((f"{dataset['uri']}/videos/nope.mp4", "no such object;"),
                     ("gs://no-such-bucket-here/v.mp4", "no such object (bucket gs://no-such-bucket-here does not exist")):
        with pytest.raises(VideoError) as e:
            load_video(uri, 4)
        assert e.value.kind == "missing_file" and str(e.value).startswith(f"{uri}: {why}"), str(e.value)
        assert "\n" not in str(e.value)


def test_a_copy_evicted_right_after_open_is_still_read(dataset, monkeypatch):
    """Another process may evict the cached copy between ``open`` and the LRU touch: the open file
    is read (no second download) and closed, not leaked for a fresh download."""
    import builtins

    from vlm3r_jax import fetch_cache

    uri = f"{dataset['uri']}/videos/scene1.mp4"
    with fetch_cache.open_local(uri) as f:
        want = f.read()
    opened, downloads = [], []

    def open_then_evicted(path, *a, **k):
        f = builtins.open(path, *a, **k)
        if not opened:
            os.unlink(path)  # as another process's eviction would
        opened.append(f)
        return f

    monkeypatch.setattr(fetch_cache, "open", open_then_evicted, raising=False)
    real = fetch_cache._download
    monkeypatch.setattr(fetch_cache, "_download", lambda *a: downloads.append(a) or real(*a))
    with fetch_cache.open_local(uri) as f:
        assert f.read() == want
    assert not downloads and len(opened) == 1 and opened[0].closed


@pytest.mark.parametrize("rel,inside", [("a/b.mp4", "a/b.mp4"), ("a/../b.mp4", "b.mp4"), ("../x.mp4", None),
                                        ("a/../../data2/x.mp4", None), ("../../other/x.mp4", None),
                                        ("/etc/passwd", None), ("gs://other/x.mp4", None)])
def test_uri_paths_stay_under_the_root(rel, inside):
    got = path_under_root("gs://b/data", rel)
    assert got == (None if inside is None else f"gs://b/data/{inside}")


def test_eval_scores_from_the_bucket_equal_the_local_copy(gcs, tmp_path):
    from vlm3r_jax.eval import records, report, runner

    local = str(tmp_path / "bench")
    info = make_bench(local)
    uri = f"gs://{BUCKET}/bench"
    storage.copy_tree(local, uri)

    def predict(batch):  # the answer depends on the decoded pixels, so the videos are really read
        return [str(round(float(load_video(r["video_path"], 3).frames.mean()) / 10, 1)) for r in batch]

    predict.name = "pixels"
    out = {}
    for root, work in ((local, str(tmp_path / "run")), (uri, f"gs://{BUCKET}/eval-run")):
        recs = records.load_records(root, "vsibench")
        runner.run_eval(recs, predict, work, 2, check_videos="open", progress=False, print_table=False,
                        fsync=False)
        out[root] = report.load_scores(work)
    assert out[uri] == out[local]
    from vlm3r_jax.eval.store import read_samples

    missing = read_samples(f"gs://{BUCKET}/eval-run/samples.jsonl")[info["missing"]]
    assert missing["error"] == f"video missing: {uri}/scannet/scene9999_00.mp4"


def test_extract_geometry_from_the_bucket_equals_local(gcs, tmp_path):
    from configs.cut3r_512_dpt import get_config
    from data_pipeline import geometry_cache
    from launch.extract_geometry import extract
    from vlm3r_jax.convert.cut3r_ckpt import save_cut3r_dir
    from vlm3r_jax.models.cut3r import init_cut3r, tiny_config

    ckpt = tmp_path / "ckpt"
    save_cut3r_dir(init_cut3r(tiny_config(enc_depth=1, dec_depth=2, local_mem_depth=1), 0), str(ckpt))
    vids = tmp_path / "videos"
    write_barcode_video(str(vids / "a.mp4"), 7, size=(48, 64))
    write_barcode_video(str(vids / "sub" / "b.mp4"), 5, size=(48, 64))
    uri = f"gs://{BUCKET}/extract-videos"
    storage.copy_tree(str(vids), uri)
    cfg = get_config()
    cfg.checkpoint = str(ckpt)
    cfg.extract.num_frames, cfg.extract.siglip_size, cfg.extract.cut3r_size = 2, 48, (32, 32)
    a = extract(cfg, str(vids), str(tmp_path / "out"))
    b = extract(cfg, uri, f"gs://{BUCKET}/extract-out")
    assert [storage.relpath(p, f"gs://{BUCKET}/extract-out") for p in b] == [os.path.relpath(p, tmp_path / "out")
                                                                             for p in a]
    for la, lb in zip(a, b):
        np.testing.assert_array_equal(geometry_cache.read_entry_unchecked(la)[0],
                                      geometry_cache.read_entry_unchecked(lb)[0])
    with pytest.raises(FileNotFoundError, match=f"gs://{BUCKET}/no-videos"):
        extract(cfg, f"gs://{BUCKET}/no-videos", str(tmp_path / "out2"))


def test_feature_caches_of_every_format_round_trip_through_the_bucket(gcs, tmp_path):
    """The npz / unkeyed safetensors writers and the official-.pt converter take URIs on both sides."""
    from launch.extract_geometry import convert_pt_cache, load_feature_cache, save_feature_cache
    from vlm3r_jax.convert.torch_save import save_torch

    tok = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float16)
    for ext in ("npz", "safetensors"):
        uri = f"gs://{BUCKET}/feat/sub/a.{ext}"
        save_feature_cache(uri, tok, "float16")
        np.testing.assert_array_equal(load_feature_cache(uri), tok)
    local = tmp_path / "spatial_features"
    local.mkdir()
    save_torch(str(local / "scene0.pt"), {"camera_tokens": tok[:, :1], "patch_tokens": tok[:, 1:]})
    storage.copy_tree(str(local), f"gs://{BUCKET}/official")
    written = convert_pt_cache(f"gs://{BUCKET}/official", f"gs://{BUCKET}/converted")
    assert written == [f"gs://{BUCKET}/converted/scene0.safetensors"]
    np.testing.assert_array_equal(load_feature_cache(written[0]), tok)
