"""A bounded local copy of remote objects (``gs://`` videos), for readers that seek all over a file.

Why not stream: PyAV reading a ``gs://`` video through a gcsfs file object issues one ranged GET
per 32 KiB buffer it fills (about 650 requests for a 19 MB, 32-frame clip: 15 s against a local
in-memory GCS emulator where a local decode takes 0.35 s), and our decoder's packet index demuxes the
whole file anyway, so ranged reads save no bytes. A cold fetch then a local decode costs 7 requests
and 0.37 s, a warm one 2 requests (bench/remote_video.py; numbers in bench/RESULTS.md).

* Location: ``$VLM3R_FETCH_CACHE`` (default ``<tmp>/vlm3r-fetch-cache-<uid>``), shared by every
  process on the host (Grain workers included; each opens its own handles).
* Bound: ``$VLM3R_FETCH_CACHE_GB`` (default 16). After a download the least recently used copies
  are deleted until the total fits; the copy being read stays open, so deleting it is harmless.
* Staleness: a copy is keyed by the URI and the object's size and generation (etag/mtime where the
  store has no generation), so a rewritten object is fetched again.
* Atomicity: a download goes to a temporary name and is renamed; two processes fetching the same
  object both succeed (the last rename wins, with the same bytes).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

import fsspec

from vlm3r_jax import storage

_VERSION_KEYS = ("generation", "etag", "ETag", "md5Hash", "mtime", "LastModified", "created")
_CHUNK = 8 << 20


def cache_dir() -> str:
    return os.environ.get("VLM3R_FETCH_CACHE") or os.path.join(tempfile.gettempdir(),
                                                               f"vlm3r-fetch-cache-{os.getuid()}")


def max_bytes() -> int:
    return int(float(os.environ.get("VLM3R_FETCH_CACHE_GB", "16")) * (1 << 30))


def _info(uri: str) -> tuple[fsspec.AbstractFileSystem, str, dict]:
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: {storage.why_missing(uri)}") from None
    if info.get("type") == "directory":
        raise IsADirectoryError(f"{uri} is a directory, not an object")
    return fs, path, info


def _local_name(uri: str, info: dict) -> str:
    version = next((str(info[k]) for k in _VERSION_KEYS if info.get(k) is not None), "")
    h = hashlib.blake2b(f"{uri}\0{info.get('size')}\0{version}".encode(), digest_size=16).hexdigest()
    return os.path.join(cache_dir(), h + os.path.splitext(uri)[1][:16])


def _evict(keep: str) -> None:
    """Deletes the least recently used copies until the cache fits its bound (never ``keep``)."""
    entries = []
    with os.scandir(cache_dir()) as it:
        for e in it:
            with contextlib.suppress(FileNotFoundError):  # another process evicted it meanwhile
                if e.is_file() and not e.name.startswith("."):
                    st = e.stat()
                    entries.append((st.st_mtime, st.st_size, e.path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= max_bytes():
            break
        if path != keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            total -= size


def _download(fs: fsspec.AbstractFileSystem, path: str, uri: str, dst: str) -> None:
    os.makedirs(cache_dir(), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir(), prefix=".fetch-")
    try:
        with os.fdopen(fd, "wb") as out, fs.open(path, "rb", block_size=_CHUNK) as src:
            shutil.copyfileobj(src, out, _CHUNK)
        os.replace(tmp, dst)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: {storage.why_missing(uri)}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def open_local(uri: str) -> Iterator[BinaryIO]:
    """An open local file holding the content of ``uri`` (downloaded once, then reused while it
    is current and fits the cache). A missing object or bucket is one ``FileNotFoundError`` line."""
    fs, path, info = _info(uri)
    local = _local_name(uri, info)
    try:
        f = open(local, "rb")
        os.utime(f.fileno())  # the LRU clock; by descriptor: an eviction since open cannot make it fail
    except FileNotFoundError:  # not fetched yet, or evicted by another process before open
        _download(fs, path, uri, local)
        f = open(local, "rb")
        _evict(keep=local)
    with f:
        yield f
