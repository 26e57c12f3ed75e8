"""Video decoding with PyAV: N uniformly sampled frames, decoding only what is needed.

Sampling is the reference rule (``process_video_with_decord`` with ``force_sample``):
``indices = linspace(0, total - 1, N).astype(int)``, frame times ``idx / avg_fps`` and duration
``total / avg_fps``. A clip shorter than N frames repeats indices (linspace does it), so the model
always gets N frames.

Decoding: the packets are demuxed once *without decoding* to learn every frame's presentation
timestamp and the keyframes; then for each wanted frame the decoder seeks to the keyframe at or
before it (only when that keyframe lies ahead of the current decode position) and decodes forward
to it. At most one GOP per wanted frame is decoded and only the N wanted frames are kept, so a long
video never sits in RAM. :func:`read_frames_full` is the plain decode-everything reference used
by the tests and the naive benchmark baseline.

A directory of frame images (jpg/png/...) is a video too: frames sorted by file name, times
``idx / frames_dir_fps`` (the reference uses 2 fps for frame folders).

A ``gs://`` (any ``etils.epath`` URI) video is decoded from a local copy that
:mod:`vlm3r_jax.fetch_cache` downloads once and bounds (:func:`video_input`); streaming it through
ranged reads costs hundreds of requests per video (the measurement is in that module).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import io
import itertools
import os
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import av
import numpy as np
from PIL import Image

from vlm3r_jax import fetch_cache, storage

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class VideoError(ValueError):
    """A video that cannot be read; ``kind`` is one of missing_file, corrupt_video, empty_video."""

    def __init__(self, path: str, message: str, kind: str = "corrupt_video"):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.kind = kind
        self.message = message

    def __reduce__(self):  # crosses process boundaries (Grain workers) intact
        return (type(self), (self.path, self.message, self.kind))


@dataclasses.dataclass
class DecodedVideo:
    """``frames`` uint8 [N, H, W, 3] RGB; ``indices`` int [N]; ``frame_times`` seconds [N]."""

    frames: np.ndarray
    indices: np.ndarray
    frame_times: np.ndarray
    duration: float
    total_frames: int
    fps: float


def sample_indices(total: int, num_frames: int) -> np.ndarray:
    """The reference rule: ``linspace(0, total-1, N)`` cast to int (repeats when total < N)."""
    if total <= 0:
        raise ValueError(f"cannot sample from a video with {total} frames")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    return np.linspace(0, total - 1, num_frames, dtype=int)


# --- container helpers -----------------------------------------------------------------------
# What PyAV opens: a local path, or an open local copy of a URI's object (see video_input).
Source = str | BinaryIO


@contextlib.contextmanager
def video_input(path: str) -> Iterator[Source]:
    """The source PyAV reads for ``path``: the path itself, or for a URI an open local copy from
    :mod:`vlm3r_jax.fetch_cache`. A missing object or bucket is a ``missing_file`` :class:`VideoError`;
    a URI that is a directory (frame images) raises ``IsADirectoryError``."""
    if not storage.is_uri(path):
        yield path
        return
    stack = contextlib.ExitStack()
    try:
        f = stack.enter_context(fetch_cache.open_local(path))
    except FileNotFoundError as e:
        raise VideoError(path, f"{str(e).removeprefix(path + ': ')}; check the video root / record path",
                         kind="missing_file") from None
    with stack:
        yield f


def _open(path: str, src: Source | None = None) -> av.container.InputContainer:
    if src is None or isinstance(src, str):
        if not os.path.exists(path):
            raise VideoError(path, "file does not exist; check the video root / record path", kind="missing_file")
        size = os.path.getsize(path)
    else:
        size = src.seek(0, os.SEEK_END)
        src.seek(0)  # the same open copy serves the index pass and the decode pass
    if size == 0:
        raise VideoError(path, "file is empty (0 bytes)", kind="empty_video")
    try:
        c = av.open(path if src is None else src)
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(path, f"cannot open container ({e})") from e
    if not c.streams.video:
        c.close()
        raise VideoError(path, "no video stream in the file", kind="empty_video")
    return c


def _fps(stream: av.video.stream.VideoStream, path: str) -> float:
    rate = stream.average_rate or stream.base_rate or stream.guessed_rate
    if not rate or float(rate) <= 0:
        raise VideoError(path, "stream has no frame rate")
    return float(rate)


@dataclasses.dataclass
class PacketIndex:
    """Presentation timestamps of every frame (sorted: index i = frame i) and the keyframe pts."""

    pts: list[int]
    key_pts: list[int]
    # keyframe pts -> its dts: the second seek target. MP4 seeks by pts (seeking to a keyframe's
    # dts lands one GOP early and doubles the decode); MPEG-TS seeks by dts (seeking to the pts
    # lands after the keyframe), so :func:`_seek_key` tries the pts and falls back to this.
    key_seek: dict[int, int]


def index_packets(path: str, src: Source | None = None) -> tuple[PacketIndex, float]:
    """Demuxes (no decoding) to list frame pts and keyframes; returns (index, fps). ``src``: what
    to read instead of ``path`` (see :func:`video_input`)."""
    c = _open(path, src)
    try:
        stream = c.streams.video[0]
        fps = _fps(stream, path)
        pts: list[int] = []
        keys: list[int] = []
        seek: dict[int, int] = {}
        try:
            for pkt in c.demux(stream):
                if pkt.size == 0 or pkt.pts is None:  # flush packets / no timestamp
                    continue
                if not getattr(pkt, "is_discard", False):  # edit-list trimmed: the decoder never outputs it
                    pts.append(int(pkt.pts))
                if pkt.is_keyframe:
                    keys.append(int(pkt.pts))
                    seek[int(pkt.pts)] = int(pkt.dts) if pkt.dts is not None else int(pkt.pts)
        except av.error.FFmpegError as e:
            raise VideoError(path, f"demuxing failed ({e}); the file is corrupt or truncated") from e
    finally:
        c.close()
    if not pts:
        raise VideoError(path, "the video stream has zero frames", kind="empty_video")
    pts.sort()
    keys.sort()
    if not keys or keys[0] > pts[0]:
        keys.insert(0, pts[0])
    return PacketIndex(pts, keys, seek), fps


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _seek_key(c: av.container.InputContainer, stream: av.video.stream.VideoStream, index: PacketIndex,
              key: int) -> Iterator[av.Packet]:
    """Packets from keyframe ``key`` on (or from an earlier keyframe: correct, only slower)."""
    for target in dict.fromkeys((key, index.key_seek.get(key, key))):
        c.seek(target, stream=stream, backward=True, any_frame=False)
        packets = c.demux(stream)
        head = []
        for pkt in packets:
            head.append(pkt)
            if pkt.pts is not None:
                break
        if not head or head[-1].pts is None or head[-1].pts <= key:
            return itertools.chain(head, packets)
    # both seeks overshot: the caller notices the missing frames and decodes without seeking
    return itertools.chain(head, packets)


def _decode_pts(
    c: av.container.InputContainer, index: PacketIndex, want: list[int], skip_nonref: bool, path: str
) -> dict[int, np.ndarray]:
    """Decodes the frames whose pts are in ``want`` (sorted); returns {pts: rgb}. Missing pts are
    simply absent (the caller retries or reports them)."""
    stream = c.streams.video[0]
    cc = stream.codec_context
    wanted = set(want)
    got: dict[int, np.ndarray] = {}
    packets = None
    fed_max = None  # largest pts fed to the decoder since the last seek
    last_out = None  # pts of the last frame the decoder returned
    for tp in want:
        if tp in got:
            continue
        key = index.key_pts[bisect.bisect_right(index.key_pts, tp) - 1]
        if packets is None or fed_max is None or key > fed_max:
            # The target's keyframe has not been fed yet: jump there (seek flushes the decoder).
            packets, fed_max, last_out = _seek_key(c, stream, index, key), None, None
        try:
            while tp not in got and not (last_out is not None and last_out > tp):
                pkt = next(packets, None)
                if pkt is None:
                    packets = None
                    break
                if pkt.pts is not None:
                    fed_max = pkt.pts if fed_max is None else max(fed_max, pkt.pts)
                # Frames nobody references and nobody wants need no decoding (B-frames, mostly).
                cc.skip_frame = "NONREF" if skip_nonref and pkt.pts is not None and pkt.pts not in wanted else "DEFAULT"
                for frame in pkt.decode():
                    if frame.pts is None:
                        continue
                    last_out = int(frame.pts)
                    if last_out in wanted and last_out not in got:
                        got[last_out] = _to_rgb(frame)
        except av.error.FFmpegError as e:
            raise VideoError(path, f"decoding failed near pts {tp} ({e}); the file is corrupt or truncated") from e
    cc.skip_frame = "DEFAULT"
    return got


def read_frames(
    path: str, indices: Sequence[int], index: PacketIndex | None = None, skip_nonref: bool = True,
    threads: int = 0, src: Source | None = None,
) -> np.ndarray:
    """uint8 [len(indices), H, W, 3] of the given frame indices (any order, repeats allowed),
    decoding at most one GOP per wanted frame and skipping non-reference frames that are not
    wanted (``skip_nonref``; a frame it misses is decoded again without skipping).
    ``threads``: decoder threads, 0 = FFmpeg's choice (about one per core). ``src``: as for
    :func:`index_packets`."""
    if index is None:
        index, _ = index_packets(path, src)
    want = sorted(set(int(i) for i in indices))
    if want and (want[0] < 0 or want[-1] >= len(index.pts)):
        raise IndexError(f"{path}: frame index out of range 0..{len(index.pts) - 1}: {want[0]}..{want[-1]}")
    want_pts = [index.pts[i] for i in want]
    c = _open(path, src)
    try:
        c.streams.video[0].thread_type = "AUTO"
        if threads > 0:
            c.streams.video[0].thread_count = threads
        got = _decode_pts(c, index, want_pts, skip_nonref, path)
        missing = [p for p in want_pts if p not in got]
        if missing and skip_nonref:
            got.update(_decode_pts(c, index, missing, False, path))
            missing = [p for p in want_pts if p not in got]
    finally:
        c.close()
    if missing:  # seeking is unreliable in this container (e.g. MPEG-PS): one linear pass, no seeks
        c = _open(path, src)
        try:
            need = set(missing)
            for frame in c.decode(video=0):
                if frame.pts in need and frame.pts not in got:
                    got[frame.pts] = _to_rgb(frame)
                    need.discard(frame.pts)
                    if not need:
                        break
        except av.error.FFmpegError:
            pass  # what was decoded before the damage counts; the rest is reported below
        finally:
            c.close()
        missing = [p for p in want_pts if p not in got]
    if missing:
        bad = [want[want_pts.index(p)] for p in missing[:5]]
        raise VideoError(path, f"frames {bad} could not be decoded; the file is truncated or corrupt")
    by_index = {i: got[p] for i, p in zip(want, want_pts, strict=True)}
    return np.stack([by_index[int(i)] for i in indices])


def read_frames_full(path: str, indices: Sequence[int] | None = None) -> np.ndarray:
    """Reference path: decode every frame in order, keep the wanted ones (all when None)."""
    c = _open(path)
    keep = None if indices is None else set(int(i) for i in indices)
    frames: dict[int, np.ndarray] = {}
    try:
        c.streams.video[0].thread_type = "AUTO"  # as the reference eval reader does
        try:
            for n, frame in enumerate(c.decode(video=0)):
                if keep is None or n in keep:
                    frames[n] = _to_rgb(frame)
        except av.error.FFmpegError as e:
            raise VideoError(path, f"decoding failed ({e})") from e
    finally:
        c.close()
    if not frames and (keep is None or keep):
        raise VideoError(path, "the video stream has zero decodable frames", kind="empty_video")
    if indices is None:
        return np.stack([frames[i] for i in sorted(frames)])
    missing = [i for i in indices if int(i) not in frames]
    if missing:
        raise VideoError(path, f"frames {missing[:5]} not decodable (video has {len(frames)} frames)")
    return np.stack([frames[int(i)] for i in indices])


# --- frame directories -----------------------------------------------------------------------
def list_frame_files(path: str) -> list[str]:
    files = [f for f in storage.listdir(path) if f.lower().endswith(IMAGE_EXTS)]
    if not files:
        raise VideoError(path, f"frame directory has no images ({', '.join(IMAGE_EXTS)})", kind="empty_video")
    return [storage.join(path, f) for f in files]


def _read_image(path: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(storage.read_bytes(path)) if storage.is_uri(path) else path) as im:
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as e:  # not an OSError: Pillow refuses to inflate it at all
        raise VideoError(path, f"frame image is too large to decode safely ({e}); resize the frames") from e
    except (OSError, ValueError) as e:
        raise VideoError(path, f"cannot read frame image ({e})") from e


# --- the entry point -------------------------------------------------------------------------
def load_video(path: str, num_frames: int = 32, frames_dir_fps: float = 2.0, decode_threads: int = 0) -> DecodedVideo:
    """N uniformly sampled RGB frames of a video file or a frame directory (``decode_threads``: see
    :func:`read_frames`; a URI's video is read from its local copy, :func:`video_input`)."""
    path = os.fspath(path)
    if storage.is_uri(path):
        try:
            with video_input(path) as src:
                return _load_file(path, src, num_frames, decode_threads)
        except IsADirectoryError:
            pass  # a folder of frame images
    elif not os.path.isdir(path):
        return _load_file(path, None, num_frames, decode_threads)
    files = list_frame_files(path)
    idx = sample_indices(len(files), num_frames)
    cache: dict[int, np.ndarray] = {}
    frames = [cache.setdefault(int(i), _read_image(files[int(i)])) if int(i) not in cache else cache[int(i)]
              for i in idx]
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise VideoError(path, f"frame images have different sizes {sorted(shapes)}; resize them to one size")
    fps = float(frames_dir_fps)
    return DecodedVideo(np.stack(frames), idx, idx / fps, len(files) / fps, len(files), fps)


def _load_file(path: str, src: Source | None, num_frames: int, decode_threads: int) -> DecodedVideo:
    index, fps = index_packets(path, src)
    total = len(index.pts)
    idx = sample_indices(total, num_frames)
    frames = read_frames(path, idx, index, threads=decode_threads, src=src)
    return DecodedVideo(frames, idx, idx / fps, total / fps, total, fps)
