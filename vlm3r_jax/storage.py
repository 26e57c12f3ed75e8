"""Local paths and URIs behind one small API, so a work dir, a checkpoint dir, metrics, eval
outputs and the geometry cache can live on ``gs://`` (or anything ``etils.epath`` opens:
``memory://``, ``s3://`` with its fsspec package...) as well as on a local disk.

| need | local path | URI |
|---|---|---|
| absolute form | ``os.path.abspath`` | untouched (``os.path.abspath("gs://b")`` would make a local ``gs:/b`` dir) |
| atomic file write | temp name + ``os.replace`` | one object write (object stores publish an object whole) |
| append a line (:class:`LineLog`) | ``O_APPEND`` | rewrite the object whole, kept in memory (object stores have no append) |
| a tree written by a local-only writer | written in place | written to a local temp dir, then copied |
| a path inside a root (:func:`normpath`) | ``os.path.normpath`` | the part after ``scheme://`` normalised, the ``//`` kept |
| a missing file (:func:`open_read`) | ``FileNotFoundError`` | ``FileNotFoundError`` naming the URI and whether the bucket is there |

Reading whole objects that a local-only reader (PyAV, ...) must seek in goes through
:mod:`vlm3r_jax.fetch_cache` (a bounded local copy), not through ranged reads.
``gs://`` needs ``gcsfs`` (the ``gcs`` extra); Orbax reaches ``gs://`` through tensorstore itself.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from etils import epath


def is_uri(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
    """A local path made absolute; a URI unchanged."""
    p = os.fspath(path)
    return p if is_uri(p) else os.path.abspath(p)


def join(base: str, *parts: str) -> str:
    return os.path.join(os.fspath(base), *parts)  # posix joining is right for URIs too


def exists(path: str) -> bool:
    return epath.Path(path).exists()


def isdir(path: str) -> bool:
    return os.path.isdir(path) if not is_uri(path) else epath.Path(path).is_dir()


def isfile(path: str) -> bool:
    return os.path.isfile(path) if not is_uri(path) else epath.Path(path).is_file()


def normpath(path: str) -> str:
    """``os.path.normpath`` that keeps a URI's ``scheme://`` (normpath would fold it to ``scheme:/``);
    ``..`` never climbs above the bucket."""
    p = os.fspath(path)
    if not is_uri(p):
        return os.path.normpath(p)
    scheme, _, rest = p.partition("://")
    return f"{scheme}:/{posixpath.normpath('/' + rest)}"


def relpath(path: str, root: str) -> str:
    """``path`` relative to ``root`` (for a URI: the part after ``root/``)."""
    if not is_uri(path):
        return os.path.relpath(path, root)
    base = normpath(root).rstrip("/") + "/"
    full = normpath(path)
    if not full.startswith(base):
        raise ValueError(f"{path} is not under {root}")
    return full[len(base):]


def why_missing(path: str) -> str:
    """Why ``path`` cannot be read, in a few words: for a URI, whether its bucket is there at all."""
    if not is_uri(path):
        return "no such file"
    scheme, _, rest = os.fspath(path).partition("://")
    bucket = f"{scheme}://{rest.split('/', 1)[0]}"
    with contextlib.suppress(Exception):  # the probe's own failure (403, no network) says no more
        if not epath.Path(bucket).exists():
            return f"no such object (bucket {bucket} does not exist or is not readable)"
    return "no such object"


def open_read(path: str) -> BinaryIO:
    """A binary file object; a missing file or object is a one-line ``FileNotFoundError``."""
    try:
        return open(path, "rb") if not is_uri(path) else epath.Path(path).open("rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {why_missing(path)}") from None


def listdir(path: str) -> list[str]:
    """The sorted entry names of a directory (a bucket prefix)."""
    return sorted(os.listdir(path)) if not is_uri(path) else sorted(p.name for p in epath.Path(path).iterdir())


def walk_files(root: str) -> list[str]:
    """Every file under ``root`` as a path relative to it, directory by directory in sorted order
    (``sorted(os.walk(root))``; on a bucket, the listing of its objects)."""
    if not is_uri(root):
        return [os.path.relpath(os.path.join(d, f), root) for d, _, files in sorted(os.walk(root))
                for f in sorted(files)]
    bare = os.fspath(root).partition("://")[2].rstrip("/")
    # epath's walk drops the scheme from the directories it yields (``bucket/dir``); either form works here
    tree = sorted((posixpath.relpath(os.fspath(d).partition("://")[2] or os.fspath(d), bare), f)
                  for d, _, f in epath.Path(root).walk())
    return [posixpath.normpath(posixpath.join(d, f)) for d, files in tree for f in sorted(files)]


def makedirs(path: str) -> None:
    """Creates ``path`` (a no-op on object stores without directories); a failure is one
    ``OSError`` line naming the location, not a library traceback."""
    try:
        epath.Path(path).mkdir(parents=True, exist_ok=True)
    except Exception as e:  # noqa: BLE001 - gcsfs/fsspec raise their own types for 403/404
        raise OSError(f"{path}: cannot create the directory ({_reason(e)})") from None


def check_writable(path: str, what: str = "directory") -> None:
    """Creates ``path`` and writes and deletes a probe object in it, so an unwritable work dir
    (a bucket without permission, a read-only mount, a file in the way) fails at the start with
    one line instead of at the first checkpoint (``os.access`` is no proof: root, read-only mounts)."""
    probe = epath.Path(path) / f".write-probe-{uuid.uuid4().hex[:8]}"
    try:
        epath.Path(path).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except Exception as e:  # noqa: BLE001 - gcsfs/fsspec raise their own types for 403/404
        raise OSError(f"{what} {path} is not a writable directory ({_reason(e)}); "
                      "pass a location you can write to") from None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def read_text(path: str) -> str:
    return epath.Path(path).read_text(encoding="utf-8")


def read_bytes(path: str) -> bytes:
    return epath.Path(path).read_bytes()


def write_atomic(path: str, data: bytes | str) -> None:
    """Readers see the old content or the new one, never half of it."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    if is_uri(path):
        epath.Path(path).write_bytes(data)  # a single object write is atomic on object stores
        return
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def replace(src: str, dst: str) -> None:
    """Moves ``src`` over ``dst`` (``os.replace`` locally; copy + delete on an object store)."""
    if not is_uri(src):
        os.replace(src, dst)
        return
    write_atomic(dst, read_bytes(src))
    epath.Path(src).unlink()


class LineLog:
    """An append-only log of whole lines at a path or URI. Locally: one ``os.write`` per entry on
    an O_APPEND descriptor (optionally fsynced), so a crash leaves at most a torn last line. On an
    object store (no append): the content is kept here and republished whole with each entry,
    never read back per write."""

    def __init__(self, path: str, fsync: bool = False):
        self.path, self.fsync = path, fsync
        self.fd: int | None = None
        self._data: bytes | None = None
        if is_uri(path):
            self._data = read_bytes(path) if exists(path) else b""
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, text: str) -> None:
        data = text.encode("utf-8")
        if self._data is not None:
            self._data += data
            write_atomic(self.path, self._data)
            return
        written = os.write(self.fd, data)
        if written != len(data):  # pragma: no cover - only on a full disk
            raise OSError(f"short write to {self.path} ({written}/{len(data)} bytes)")
        if self.fsync:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def glob(directory: str, pattern: str) -> list[str]:
    d = epath.Path(directory)
    return sorted(os.fspath(p) for p in d.glob(pattern)) if d.exists() else []


def copy_tree(src: str, dst: str) -> None:
    """Copies a local directory tree to ``dst`` (a path or URI), file by file."""
    for root, _, files in os.walk(src):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), src)
            target = epath.Path(dst) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(os.path.join(root, name), "rb") as f:
                target.write_bytes(f.read())


@contextlib.contextmanager
def local_dir(dst: str) -> Iterator[str]:
    """A local directory for a writer that only knows local files: ``dst`` itself when local,
    else a temporary directory copied to ``dst`` on success."""
    if not is_uri(dst):
        os.makedirs(dst, exist_ok=True)
        yield dst
        return
    tmp = tempfile.mkdtemp(prefix="vlm3r-upload-")
    try:
        yield tmp
        copy_tree(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
