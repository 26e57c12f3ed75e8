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
"""

from __future__ import annotations

import bisect
import dataclasses
import os
from collections.abc import Sequence

import av
import numpy as np
from PIL import Image

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class VideoError(ValueError):
    """A video that cannot be read; ``kind`` is one of missing_file, corrupt_video, empty_video."""

    def __init__(self, path: str, message: str, kind: str = "corrupt_video"):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.kind = kind


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
def _open(path: str) -> av.container.InputContainer:
    if not os.path.exists(path):
        raise VideoError(path, "file does not exist; check the video root / record path", kind="missing_file")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "file is empty (0 bytes)", kind="empty_video")
    try:
        c = av.open(path)
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


def index_packets(path: str) -> tuple[PacketIndex, float]:
    """Demuxes (no decoding) to list frame pts and keyframes; returns (index, fps)."""
    c = _open(path)
    try:
        stream = c.streams.video[0]
        fps = _fps(stream, path)
        pts: list[int] = []
        keys: list[int] = []
        try:
            for pkt in c.demux(stream):
                if pkt.size == 0 or pkt.pts is None:  # flush packets / no timestamp
                    continue
                pts.append(int(pkt.pts))
                if pkt.is_keyframe:
                    keys.append(int(pkt.pts))
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
    return PacketIndex(pts, keys), fps


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def read_frames(path: str, indices: Sequence[int], index: PacketIndex | None = None) -> np.ndarray:
    """uint8 [len(indices), H, W, 3] of the given frame indices (any order, repeats allowed),
    decoding one GOP at most per wanted frame."""
    if index is None:
        index, _ = index_packets(path)
    want = sorted(set(int(i) for i in indices))
    if want and (want[0] < 0 or want[-1] >= len(index.pts)):
        raise IndexError(f"{path}: frame index out of range 0..{len(index.pts) - 1}: {want[0]}..{want[-1]}")
    target_pts = [index.pts[i] for i in want]
    got: dict[int, np.ndarray] = {}
    c = _open(path)
    try:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        decoder = None
        last_pts = None  # pts of the last decoded frame
        for i, tp in zip(want, target_pts, strict=True):
            key = index.key_pts[bisect.bisect_right(index.key_pts, tp) - 1]
            if decoder is None or last_pts is None or key > last_pts or tp <= last_pts:
                c.seek(key, stream=stream, backward=True, any_frame=False)
                decoder = c.decode(stream)
                last_pts = None
            frame = None
            try:
                for frame in decoder:
                    if frame.pts is None:
                        continue
                    last_pts = int(frame.pts)
                    if last_pts >= tp:
                        break
            except av.error.FFmpegError as e:
                raise VideoError(path, f"decoding failed near frame {i} ({e}); the file is corrupt or truncated") from e
            if frame is None or last_pts is None or last_pts < tp:
                raise VideoError(path, f"frame {i} (pts {tp}) could not be decoded; the file is truncated or corrupt")
            if last_pts != tp:
                raise VideoError(path, f"seeking landed on pts {last_pts} instead of {tp} for frame {i}")
            got[i] = _to_rgb(frame)
    finally:
        c.close()
    return np.stack([got[int(i)] for i in indices])


def read_frames_full(path: str, indices: Sequence[int] | None = None) -> np.ndarray:
    """Reference path: decode every frame in order, keep the wanted ones (all when None)."""
    c = _open(path)
    keep = None if indices is None else set(int(i) for i in indices)
    frames: dict[int, np.ndarray] = {}
    try:
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
    files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTS))
    if not files:
        raise VideoError(path, f"frame directory has no images ({', '.join(IMAGE_EXTS)})", kind="empty_video")
    return [os.path.join(path, f) for f in files]


def _read_image(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise VideoError(path, f"cannot read frame image ({e})") from e


# --- the entry point -------------------------------------------------------------------------
def load_video(path: str, num_frames: int = 32, frames_dir_fps: float = 2.0) -> DecodedVideo:
    """N uniformly sampled RGB frames of a video file or a frame directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
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
    index, fps = index_packets(path)
    total = len(index.pts)
    idx = sample_indices(total, num_frames)
    frames = read_frames(path, idx, index)
    return DecodedVideo(frames, idx, idx / fps, total / fps, total, fps)
