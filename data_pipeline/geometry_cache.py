"""The per-video CUT3R token cache that training and evaluation read instead of running CUT3R.

Layout: ``<cache>/<video path relative to the data root, extension replaced>.safetensors`` holding
``camera_tokens`` [F, 1, Dg] and ``patch_tokens`` [F, N, Dg], plus ``<cache>/geometry_cache.json``
(the manifest). Written by ``python -m launch.extract_geometry``; any ``etils.epath`` location works
(local, ``gs://``, ``memory://``...).

An entry is used only when its key matches what the run would compute online:

| part | what it covers | how |
|---|---|---|
| ``cut3r`` | CUT3R weights + config + the 432x432 resize | blake2b over the config (dtypes excluded) and every parameter as float32 |
| ``sampling`` | frame choice and SigLIP view | num_frames, the index rule, siglip_size, frames_dir_fps |
| ``video`` (per entry) | the video's content | file size + blake2b of its first and last MiB (mtime is not used: copying a dataset to a bucket keeps its cache valid) |
| ``tokens`` (per entry) | the entry itself | blake2b of the tensor bytes (a flipped byte or a truncated file is detected) |

A mismatch raises :class:`GeometryCacheError` (one line naming the entry and the fix); nothing
falls back silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from typing import Any

import jax
import numpy as np
from etils import epath

from vlm3r_jax import storage

CACHE_KEYS = ("camera_tokens", "patch_tokens")
MANIFEST = "geometry_cache.json"
FORMAT_VERSION = 1
SAMPLING_RULE = "linspace(0, total - 1, num_frames).astype(int)"
_CHUNK = 1 << 20
_ST_DTYPES = {"F16": np.float16, "F32": np.float32, "BF16": jax.numpy.bfloat16}


class GeometryCacheError(ValueError):
    """A cache entry that does not match the run (stale, other weights, corrupted)."""


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p)
    return h.hexdigest()


def video_fingerprint(path: str) -> str:
    """``<size>:<blake2b of the first and last MiB>`` of a video file (see the module table)."""
    p = epath.Path(path)
    with p.open("rb") as f:
        head = f.read(_CHUNK)
        size = f.seek(0, os.SEEK_END)
        tail = b""
        if size > 2 * _CHUNK:
            f.seek(size - _CHUNK)
            tail = f.read(_CHUNK)
    return f"{size}:{_digest(head, tail)}"


def cut3r_fingerprint(cfg: Any, image_size: tuple[int, int], params: Any) -> str:
    """Fingerprint of CUT3R's config (dtype fields excluded: they do not change the weights), the
    input size and every parameter cast to float32. ``params``: the ``nnx.Param`` state of a
    ``Cut3r`` module (paths relative to it)."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if "dtype" not in k}
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"config": fields, "image_size": list(image_size)}, sort_keys=True, default=str).encode())
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda kv: jax.tree_util.keystr(kv[0])):
        arr = np.ascontiguousarray(np.asarray(leaf, dtype=np.float32))
        h.update(jax.tree_util.keystr(path).encode() + str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def cache_key(cut3r: str, num_frames: int, siglip_size: int, frames_dir_fps: float) -> str:
    """The run-wide part of the key (canonical JSON, so it can live in a frozen config)."""
    sampling = {"num_frames": int(num_frames), "rule": SAMPLING_RULE, "siglip_size": int(siglip_size),
                "frames_dir_fps": float(frames_dir_fps)}
    return json.dumps({"version": FORMAT_VERSION, "cut3r": cut3r, "sampling": sampling}, sort_keys=True)


def key_for_model(model: Any, num_frames: int, siglip_size: int, frames_dir_fps: float = 2.0) -> str:
    """The key a cache must carry to stand in for ``model``'s CUT3R (a ``VLM3R``) on this sampling."""
    from flax import nnx

    if model.spatial_tower is None:
        raise ValueError("a geometry cache is configured but the model has no CUT3R (model.geometry)")
    fp = cut3r_fingerprint(model.cfg.geometry, model.cfg.geometry_image_size, nnx.state(model.spatial_tower, nnx.Param))
    return cache_key(fp, num_frames, siglip_size, frames_dir_fps)


def _differs(found: str, expected: str) -> str:
    f, e = json.loads(found), json.loads(expected)
    if f.get("cut3r") != e.get("cut3r"):
        return "other CUT3R weights or config"
    fs, es = f.get("sampling", {}), e.get("sampling", {})
    diff = [f"{k}={fs.get(k)!r} (run: {es.get(k)!r})" for k in sorted(set(fs) | set(es)) if fs.get(k) != es.get(k)]
    return "other frame sampling: " + ", ".join(diff) if diff else f"format version {f.get('version')}"


def entry_path(cache_dir: str, rel_video: str) -> str:
    return os.path.join(cache_dir, os.path.splitext(rel_video)[0] + ".safetensors")


def write_manifest(cache_dir: str, key: str, overwrite: bool = False) -> None:
    """Creates the manifest, or checks that an existing one has this key (a cache dir never mixes
    entries of two keys unless ``overwrite``)."""
    p = epath.Path(cache_dir) / MANIFEST
    if p.exists() and not overwrite:
        found = p.read_text()
        if json.loads(found) != json.loads(key):
            raise GeometryCacheError(f"{cache_dir}: this cache was built with {_differs(found, key)}; "
                                     "use a new --out dir or --overwrite")
        return
    storage.makedirs(cache_dir)
    storage.write_atomic(os.fspath(p), key)


def check_manifest(cache_dir: str, key: str) -> None:
    """Refuses a cache dir built for another run (called once, before the pipeline starts)."""
    p = epath.Path(cache_dir) / MANIFEST
    if not p.exists():
        raise GeometryCacheError(f"{cache_dir}: no {MANIFEST}; build the cache with python -m launch.extract_geometry "
                                 "--videos <data root> --out <this dir> (same CUT3R checkpoint and num_frames)")
    found = p.read_text()
    if json.loads(found) != json.loads(key):
        raise GeometryCacheError(f"{cache_dir}: cache built with {_differs(found, key)}; rebuild it with "
                                 "python -m launch.extract_geometry for this model and data config")


def _encode(arrays: dict[str, np.ndarray], meta: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": meta}
    offset, blobs = 0, []
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        name = {"float16": "F16", "float32": "F32", "bfloat16": "BF16"}[a.dtype.name]
        header[k] = {"dtype": name, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * ((8 - len(head) % 8) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def _decode(buf: bytes, where: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        (n,) = struct.unpack("<Q", buf[:8])
        header = json.loads(buf[8:8 + n])
        meta = header.pop("__metadata__", {})
        body = memoryview(buf)[8 + n:]
        out = {}
        for k, h in header.items():
            dt = _ST_DTYPES[h["dtype"]]
            lo, hi = h["data_offsets"]
            if hi > len(body):
                raise ValueError("truncated")
            out[k] = np.frombuffer(body[lo:hi], dtype=dt).reshape(h["shape"])
    except (ValueError, KeyError, struct.error, UnicodeDecodeError) as e:
        raise GeometryCacheError(f"{where}: corrupted geometry cache entry ({e}); delete it and re-run "
                                 "python -m launch.extract_geometry") from None
    return out, meta


def save_entry(path: str, tokens: np.ndarray, key: str, video_fp: str, out_dtype: str = "float16") -> None:
    """tokens [F, 1 + N, Dg] (camera first) -> one entry, written atomically."""
    dt = jax.numpy.bfloat16 if out_dtype == "bfloat16" else np.dtype(out_dtype)
    arrays = {"camera_tokens": tokens[:, :1].astype(dt), "patch_tokens": tokens[:, 1:].astype(dt)}
    meta = {"key": key, "video": video_fp,
            "tokens": _digest(*(np.ascontiguousarray(arrays[k]).tobytes() for k in CACHE_KEYS))}
    storage.makedirs(os.path.dirname(path))
    storage.write_atomic(path, _encode(arrays, meta))  # temp + rename locally, one object write on a bucket


def read_entry_unchecked(path: str) -> tuple[np.ndarray, dict[str, str]]:
    """(tokens [F, 1 + N, Dg], metadata) with only the corruption check."""
    try:  # one request on a bucket, not an exists() probe first
        data = epath.Path(path).read_bytes()
    except FileNotFoundError:
        raise GeometryCacheError(f"{path}: no geometry cache entry for this video; run python -m "
                                 "launch.extract_geometry over the data root first") from None
    arrays, meta = _decode(data, path)
    if set(arrays) != set(CACHE_KEYS) or meta.get("tokens") != _digest(*(arrays[k].tobytes() for k in CACHE_KEYS)):
        raise GeometryCacheError(f"{path}: corrupted geometry cache entry (checksum mismatch); delete it and "
                                 "re-run python -m launch.extract_geometry")
    return np.concatenate([arrays["camera_tokens"], arrays["patch_tokens"]], axis=1), meta


def read_entry(path: str, key: str, video: str) -> np.ndarray:
    """The tokens [F, 1 + N, Dg] of ``video``, after every check of the module table."""
    tokens, meta = read_entry_unchecked(path)
    if meta.get("key") != key:
        if "key" not in meta:
            raise GeometryCacheError(f"{path}: entry has no cache key (an old or converted file); rebuild it")
        raise GeometryCacheError(f"{path}: entry built with {_differs(meta['key'], key)}; rebuild the cache")
    if meta.get("video") != video_fingerprint(video):
        raise GeometryCacheError(f"{path}: stale entry, {video} changed since the cache was built; re-run "
                                 "python -m launch.extract_geometry --overwrite")
    return tokens
