"""Offline CUT3R feature cache: ``python -m launch.extract_geometry --config configs/cut3r_512_dpt.py
--videos DIR --out DIR [--config.checkpoint=PATH] [--config.extract.format=npz]``.

For every video under ``--videos`` (recursively; a local dir or a URI such as ``gs://bucket/videos``,
whose videos are decoded from a bounded local copy, ``vlm3r_jax/fetch_cache.py``) it writes ``<out>/<relative path>.safetensors`` (or
``.npz``) holding ``camera_tokens`` [F, 1, D] and ``patch_tokens`` [F, N, D] in
``config.extract.out_dtype`` - the same two tensors as the official VLM-3R cache
(``scripts/extract_spatial_features.py``). Frames come from the training pipeline's decoder
(``num_frames`` uniformly spaced indices, ``np.linspace(0, total - 1, n).astype(int)``), squashed to
SigLIP's 384x384 with PIL bicubic, normalised to [-1, 1] and resized bilinearly to 432x432.
A safetensors cache carries its key (CUT3R fingerprint, sampling, per-video content hash; see
``data_pipeline/geometry_cache.py``), so training with ``config.data.geometry_cache`` refuses a
stale or mismatched cache.

Resumable: finished outputs are skipped (each file is written under a temporary name and renamed).

Official cache convention: the training data loader looks for ``.../spatial_features/<scene>.pt`` next
to ``.../videos/<scene>.mp4`` (path with ``videos`` -> ``spatial_features`` and ``.mp4`` -> ``.pt``). Such
existing ``.pt`` files (``torch.save({"camera_tokens", "patch_tokens"})``) convert to our format without
torch or CUT3R: ``python -m launch.extract_geometry --convert_pt DIR --out DIR``. Read caches with
:func:`load_feature_cache`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator

import numpy as np
from absl import app, flags
from ml_collections import config_flags

CACHE_KEYS = ("camera_tokens", "patch_tokens")


def official_cache_path(video_path: str) -> str:
    """The official loader's location of a video's cached features:
    ``.../videos/<scene>.mp4`` -> ``.../spatial_features/<scene>.pt``."""
    return os.path.splitext(video_path.replace("videos", "spatial_features"))[0] + ".pt"


def cache_path(rel: str, out_dir: str, fmt: str) -> str:
    from vlm3r_jax import storage

    return storage.join(out_dir, os.path.splitext(rel)[0] + (".safetensors" if fmt == "safetensors" else ".npz"))


def save_feature_cache(path: str, tokens: np.ndarray, out_dtype: str = "float16", meta: dict | None = None) -> None:
    """tokens [F, 1 + N, D] (camera first) -> ``camera_tokens`` [F, 1, D] + ``patch_tokens`` [F, N, D],
    written atomically (temporary name, then rename; on a bucket, one object write of a file made
    locally first)."""
    from vlm3r_jax import storage

    if storage.is_uri(path):
        with tempfile.TemporaryDirectory() as d:
            local = os.path.join(d, os.path.basename(path))
            save_feature_cache(local, tokens, out_dtype, meta)
            storage.makedirs(os.path.dirname(path))
            with open(local, "rb") as f:
                storage.write_atomic(path, f.read())
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    arrs = {"camera_tokens": tokens[:, :1].astype(out_dtype), "patch_tokens": tokens[:, 1:].astype(out_dtype)}
    if path.endswith(".safetensors"):
        from vlm3r_jax.convert.safetensors_io import save_safetensors

        save_safetensors(path, arrs, metadata={k: str(v) for k, v in (meta or {}).items()})
    else:
        tmp = f"{path}.tmp-{os.getpid()}.npz"
        np.savez(tmp, **arrs)
        os.replace(tmp, path)


def load_feature_cache(path: str) -> np.ndarray:
    """A cache file (ours: .safetensors/.npz; official: .pt) -> tokens [F, 1 + N, D], camera token first.
    A URI is read from a local copy (``vlm3r_jax/fetch_cache.py``): the readers seek within the file."""
    from vlm3r_jax import fetch_cache, storage

    if storage.is_uri(path):
        with fetch_cache.open_local(path) as f:
            return load_feature_cache(f.name)
    if path.endswith(".safetensors"):
        from vlm3r_jax.convert.safetensors_io import SafetensorsDir

        src = SafetensorsDir(path)
        d = {k: np.asarray(src.get(k)) for k in CACHE_KEYS}
    elif path.endswith(".npz"):
        with np.load(path) as z:
            d = {k: z[k] for k in CACHE_KEYS}
    else:
        from vlm3r_jax.convert.torch_pickle import load_torch_pickle

        d = load_torch_pickle(path)
        if not isinstance(d, dict) or not all(k in d for k in CACHE_KEYS):
            raise ValueError(f"{path}: expected a dict with {CACHE_KEYS}, got {type(d).__name__}")
    return np.concatenate([d["camera_tokens"], d["patch_tokens"]], axis=1)


def iter_videos(root: str, exts: tuple[str, ...]) -> Iterator[str]:
    """Paths relative to ``root`` (a dir or a URI) of its files ending in ``exts``."""
    from vlm3r_jax import storage

    if not storage.isdir(root):
        why = f" ({storage.why_missing(root)})" if storage.is_uri(root) else ""
        raise FileNotFoundError(f"videos directory {root} does not exist{why}")
    yield from (rel for rel in storage.walk_files(root) if rel.lower().endswith(tuple(exts)))


def geometry_handle(config):
    """The CUT3R named by ``config.checkpoint`` (a path or Hub id)."""
    from vlm3r_jax.convert import hub
    from vlm3r_jax.infer.cut3r_geometry import Cut3rGeometry

    ckpt = hub.resolve(config.checkpoint, hub.CUT3R_FILES, what="CUT3R checkpoint")
    return Cut3rGeometry.from_pretrained(ckpt, dtype=config.dtype.compute_dtype)


def extract_key(ex, geo) -> str:
    """The cache key (data_pipeline/geometry_cache.py) of ``geo``'s weights and ``config.extract``."""
    from flax import nnx

    from data_pipeline import geometry_cache

    params = nnx.state(nnx.merge(geo.graphdef, geo.state), nnx.Param)
    fp = geometry_cache.cut3r_fingerprint(geo.cfg, tuple(ex.cut3r_size), params)
    return geometry_cache.cache_key(fp, ex.num_frames, ex.siglip_size, ex.get("frames_dir_fps", 2.0))


def extract(config, videos: str, out: str, limit: int = 0, overwrite: bool = False, geo=None) -> list[str]:
    """Runs the extraction; returns the output paths written in this call. Frames come from the
    training pipeline's own decoder and SigLIP view (``data_pipeline.video.load_video``), so a cached
    entry equals what the train step would compute online. ``geo``: a ``Cut3rGeometry`` (default:
    ``config.checkpoint``)."""
    from tqdm import tqdm

    from data_pipeline import geometry_cache
    from data_pipeline.video import load_video
    from data_pipeline.views import ViewConfig, siglip_view
    from vlm3r_jax import storage

    ex = config.extract
    todo = list(iter_videos(videos, tuple(ex.video_exts)))
    if limit:
        todo = todo[:limit]
    pending = [r for r in todo if overwrite or not storage.exists(cache_path(r, out, ex.format))]
    print(f"{len(todo)} videos, {len(todo) - len(pending)} already done, {len(pending)} to extract", file=sys.stderr)
    if not pending:
        return []
    geo = geo if geo is not None else geometry_handle(config)
    key = extract_key(ex, geo) if ex.format == "safetensors" else ""
    if key:
        geometry_cache.write_manifest(out, key, overwrite=overwrite)
    written = []
    for rel in tqdm(pending, desc="CUT3R features", unit="video"):
        src = storage.join(videos, rel)
        video = load_video(src, ex.num_frames, ex.get("frames_dir_fps", 2.0))
        pixels = siglip_view(video.frames, ViewConfig(ex.siglip_size, None))
        tok = geo.tokens_from_siglip_pixels(pixels, tuple(ex.cut3r_size))
        dst = cache_path(rel, out, ex.format)
        if key:
            geometry_cache.save_entry(dst, tok, key, geometry_cache.video_fingerprint(src), ex.out_dtype)
        else:
            save_feature_cache(dst, tok, ex.out_dtype, meta={"source": rel, "num_frames": ex.num_frames})
        written.append(dst)
    return written


def convert_pt_cache(src_dir: str, out: str, fmt: str = "safetensors", out_dtype: str | None = None) -> list[str]:
    """Official ``spatial_features/*.pt`` files -> our format (pickle-free, no torch needed);
    either side may be a URI."""
    from tqdm import tqdm

    from vlm3r_jax import storage

    written = []
    for rel in tqdm(list(iter_videos(src_dir, (".pt",))), desc="convert .pt", unit="file"):
        tok = load_feature_cache(storage.join(src_dir, rel))
        dst = cache_path(rel, out, fmt)
        save_feature_cache(dst, tok, out_dtype or str(tok.dtype))
        written.append(dst)
    return written


def _define_flags() -> dict:
    # Defined only when run as a script, so importing this module (tests, other launchers) never
    # registers duplicate absl flags.
    return dict(
        config=config_flags.DEFINE_config_file("config", "configs/cut3r_512_dpt.py", "CUT3R extraction config"),
        videos=flags.DEFINE_string("videos", None, "directory of videos (searched recursively)"),
        out=flags.DEFINE_string("out", None, "output directory for the per-video token files"),
        convert_pt=flags.DEFINE_string("convert_pt", None, "convert an existing official spatial_features/*.pt dir"),
        limit=flags.DEFINE_integer("limit", 0, "process at most this many videos (0 = all)"),
        overwrite=flags.DEFINE_bool("overwrite", False, "recompute files that already exist"),
    )


def main(argv: list[str], f: dict) -> None:
    del argv
    if not f["out"].value:
        raise app.UsageError("--out is required")
    if f["convert_pt"].value:
        convert_pt_cache(f["convert_pt"].value, f["out"].value, f["config"].value.extract.format)
        return
    if not f["videos"].value:
        raise app.UsageError("--videos (or --convert_pt) is required")
    extract(f["config"].value, f["videos"].value, f["out"].value, f["limit"].value, f["overwrite"].value)


if __name__ == "__main__":
    _flags = _define_flags()
    from launch import cli

    cli.run(lambda argv: main(argv, _flags), help_config="configs/cut3r_512_dpt.py")
