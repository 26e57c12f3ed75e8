"""Training from the offline CUT3R cache (data_pipeline/geometry_cache.py): the cached and the
online geometry give the same losses on a tiny VLM-3R; a corrupted, stale or mismatched cache is
refused with one line, never skipped past or used."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from _vlm3r_helpers import small_model_config, tokenizer
from flax import nnx

from configs import cut3r_512_dpt, demo_tiny
from data_pipeline import geometry_cache
from data_pipeline.synthetic_video import write_barcode_video
from launch.extract_geometry import extract, extract_key, load_feature_cache
from vlm3r_jax.infer.cut3r_geometry import Cut3rGeometry
from vlm3r_jax.models.host_init import host_init
from vlm3r_jax.models.vlm3r import VLM3R
from vlm3r_jax.train import vlm3r_task

FRAMES = 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("geo")
    root = d / "data"
    for i in range(2):  # two scene videos, two questions each
        write_barcode_video(str(root / "videos" / f"scene{i}.mp4"), 7 + 3 * i, size=(40, 48), gop=4)
    turns = lambda q, a: [{"from": "human", "value": f"<image>\nHow many chairs {q}?"}, {"from": "gpt", "value": a}]  # noqa: E731
    rows = [{"id": f"r{i}{q}", "video": f"videos/scene{i}.mp4", "conversations": turns(q, str(i + q))}
            for i in range(2) for q in range(2)]
    (root / "train.json").write_text(json.dumps(rows))
    tok = tokenizer(str(d))
    cfg = demo_tiny.get_config()
    cfg.model = small_model_config()
    cfg.data.update(dict(root=str(root), train_files=("train.json",), num_frames=FRAMES, siglip_size=32,
                         worker_count=0, length_buckets=(64, 128), video_cache_size=0))
    cfg.train.batch_size = 2
    vcfg = vlm3r_task.vlm3r_config(cfg.model, tok)
    model = host_init(lambda: VLM3R(vcfg, rngs=nnx.Rngs(params=0, dropout=1)))
    ecfg = cut3r_512_dpt.get_config()
    ecfg.extract.update(dict(num_frames=FRAMES, siglip_size=32, cut3r_size=(32, 32), out_dtype="float32"))
    return dict(d=d, root=root, cfg=cfg, vcfg=vcfg, model=model, tok=tok, ecfg=ecfg)


def _random_cache(s, cache) -> dict:
    """A cache with this model's key and random tokens (no CUT3R compile): {video: tokens}."""
    ex = s["ecfg"].extract
    key = extract_key(ex, Cut3rGeometry(s["model"].spatial_tower))
    geometry_cache.write_manifest(str(cache), key)
    rng, out = np.random.default_rng(0), {}
    for i in range(2):
        video = str(s["root"] / "videos" / f"scene{i}.mp4")
        out[video] = rng.normal(size=(FRAMES, 1 + 4, 24)).astype(np.float32)
        geometry_cache.save_entry(str(cache / "videos" / f"scene{i}.safetensors"), out[video], key,
                                  geometry_cache.video_fingerprint(video), "float32")
    return out


def _batches(s, cached: bool, n: int = 1):
    cfg = s["cfg"]
    cfg.data.geometry_cache = str(s["cache"]) if cached else ""
    key = vlm3r_task.geometry_key(cfg, s["model"]) if cached else ""
    with vlm3r_task.train_iterator(cfg, s["vcfg"], s["tok"], key) as it:
        return [next(it) for _ in range(n)]


@pytest.mark.slow  # ~90 s on 2 busy cores: CUT3R compiles for the extraction and inside the online step
def test_cached_and_online_geometry_give_the_same_losses(setup, tmp_path):
    cache = tmp_path / "cache"
    written = extract(setup["ecfg"], str(setup["root"]), str(cache), geo=Cut3rGeometry(setup["model"].spatial_tower))
    assert len(written) == 2
    setup = {**setup, "cache": cache}
    graphdef, state = nnx.split(setup["model"])
    loss = jax.jit(lambda st, b: vlm3r_task.vlm3r_loss(nnx.merge(graphdef, st), b)[0])
    online, cached = _batches(setup, False, n=2), _batches(setup, True, n=2)
    for a, b in zip(online, cached, strict=True):
        assert "geometry_tokens" not in a and b["geometry_tokens"].shape == (2, FRAMES, 1 + 4, 24)
        np.testing.assert_array_equal(a["frames"], b["frames"])
        la = float(loss(state, {k: v for k, v in a.items() if v.dtype.kind in "biuf"}))
        lb = float(loss(state, {k: v for k, v in b.items() if v.dtype.kind in "biuf"}))
        np.testing.assert_allclose(lb, la, rtol=1e-5)


def test_pipeline_reads_the_cache_per_video(setup, tmp_path):
    cache = tmp_path / "cache"
    tokens = _random_cache(setup, cache)
    (batch,) = _batches({**setup, "cache": cache}, True)
    for row, video in enumerate(batch["id"]):
        want = tokens[str(setup["root"] / "videos" / f"scene{video[1]}.mp4")]
        np.testing.assert_array_equal(batch["geometry_tokens"][row], want)


def test_corrupted_stale_and_mismatched_caches_are_refused(setup, tmp_path):
    cache = tmp_path / "cache"
    _random_cache(setup, cache)
    s = {**setup, "cache": cache}
    entry = cache / "videos" / "scene0.safetensors"
    good = entry.read_bytes()
    raw = bytearray(good)
    raw[-3] ^= 0x55  # one flipped byte in the tensor data
    entry.write_bytes(bytes(raw))
    with pytest.raises(geometry_cache.GeometryCacheError, match="corrupted"):
        _batches(s, True)  # raised, not counted as a skipped record
    entry.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(geometry_cache.GeometryCacheError, match="corrupted"):
        geometry_cache.read_entry_unchecked(str(entry))
    entry.write_bytes(good)

    video = tmp_path / "scene0.mp4"
    write_barcode_video(str(video), 9, size=(40, 48), gop=4)  # other content than the cached one
    key = vlm3r_task.geometry_key(setup["cfg"], setup["model"])
    with pytest.raises(geometry_cache.GeometryCacheError, match="stale entry"):
        geometry_cache.read_entry(str(entry), key, str(video))

    other = host_init(lambda: VLM3R(setup["vcfg"], rngs=nnx.Rngs(params=0, dropout=1)), seed=1)
    with pytest.raises(geometry_cache.GeometryCacheError, match="other CUT3R weights"):
        vlm3r_task.geometry_key(s["cfg"], other)
    s["cfg"].data.num_frames = 3
    try:
        with pytest.raises(geometry_cache.GeometryCacheError, match=r"num_frames=2 \(run: 3\)"):
            vlm3r_task.geometry_key(s["cfg"], setup["model"])
    finally:
        s["cfg"].data.num_frames = FRAMES
    with pytest.raises(geometry_cache.GeometryCacheError, match="no geometry_cache.json"):
        geometry_cache.check_manifest(str(tmp_path / "nowhere"), key)
    with pytest.raises(geometry_cache.GeometryCacheError, match="no geometry cache entry for this video"):
        geometry_cache.read_entry_unchecked(str(cache / "videos" / "nowhere.safetensors"))
    # extracting into a cache of another key is refused before anything is written
    ecfg = setup["ecfg"]
    ecfg.extract.num_frames = 3
    (cache / "videos" / "scene1.safetensors").unlink()
    try:
        with pytest.raises(geometry_cache.GeometryCacheError, match="use a new --out"):
            extract(ecfg, str(setup["root"]), str(cache), geo=Cut3rGeometry(setup["model"].spatial_tower))
    finally:
        ecfg.extract.num_frames = FRAMES
    assert not (cache / "videos" / "scene1.safetensors").exists()


def test_official_pt_features_read_without_torch(tmp_path):
    """The official preprocessing saves ``{"camera_tokens", "patch_tokens"}`` per video with
    ``torch.save``; the pickle-free reader loads them (file written by our torch-free writer)."""
    from vlm3r_jax.convert.torch_save import save_torch

    rng = np.random.default_rng(0)
    cam, patch = rng.normal(size=(3, 1, 8)).astype(np.float16), rng.normal(size=(3, 9, 8)).astype(np.float16)
    path = tmp_path / "spatial_features" / "scene0.pt"
    path.parent.mkdir()
    save_torch(str(path), {"camera_tokens": cam, "patch_tokens": patch})
    np.testing.assert_array_equal(load_feature_cache(str(path)), np.concatenate([cam, patch], axis=1))


@pytest.mark.slow  # ~1-2 min: CUT3R compiles for the extraction and inside the online decoder
def test_eval_predictor_answers_the_same_from_the_cache(tmp_path):
    from _vlm3r_helpers import small_model

    from vlm3r_jax.eval.sharded import ShardedVLM3RPredictor

    handle = small_model(str(tmp_path), num_frames=FRAMES)
    root = tmp_path / "bench"
    write_barcode_video(str(root / "scannet" / "scene0.mp4"), 7, size=(40, 48), gop=4)
    ecfg = cut3r_512_dpt.get_config()
    ecfg.extract.update(dict(num_frames=FRAMES, siglip_size=32, cut3r_size=(32, 32), out_dtype="float32"))
    extract(ecfg, str(root), str(tmp_path / "cache"), geo=Cut3rGeometry(handle.model.spatial_tower))
    rec = {"id": "q0", "prompt": "How many chairs?", "video_path": str(root / "scannet" / "scene0.mp4")}
    kw = dict(batch_size=1, num_frames=FRAMES, max_new_tokens=4, length_buckets=(64,))
    online = ShardedVLM3RPredictor(handle, **kw)
    cached = ShardedVLM3RPredictor(handle, **kw, geometry_cache=str(tmp_path / "cache"), video_root=str(root))
    ex = cached.prepare(rec)
    assert ex["example"]["geometry_tokens"].shape == (FRAMES, 1 + 4, 24)
    assert cached([ex]) == online([online.prepare(rec)])
