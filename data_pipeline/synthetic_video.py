"""Small real videos for tests and benchmarks: every frame carries its own index as a barcode.

The top band of each frame is split into ``BITS`` cells, white for a 1 bit and black for a 0 bit
of the frame index; below it a moving gradient keeps the encoder honest (motion between frames).
:func:`read_barcode` recovers the index from decoded pixels, so a test can check exactly which
frames a decoder returned.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import av
import numpy as np
from PIL import Image

BITS = 12


def barcode_frame(index: int, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3]: index barcode in the top third, moving pattern below."""
    f = np.zeros((height, width, 3), np.uint8)
    band = max(height // 3, 8)
    cell = width // BITS
    for b in range(BITS):
        if (index >> b) & 1:
            f[:band, b * cell : (b + 1) * cell] = 255
    yy, xx = np.mgrid[band:height, 0:width]
    f[band:, :, 0] = ((xx + 4 * index) % 256).astype(np.uint8)
    f[band:, :, 1] = ((yy * 2 + 3 * index) % 256).astype(np.uint8)
    f[band:, :, 2] = ((xx + yy + 7 * index) % 256).astype(np.uint8)
    return f


def read_barcode(frame: np.ndarray) -> int:
    """Frame index encoded by :func:`barcode_frame` (robust to lossy compression)."""
    h, w = frame.shape[:2]
    band = max(h // 3, 8)
    cell = w // BITS
    gray = frame[: band, :, :].astype(np.float32).mean(-1)
    value = 0
    for b in range(BITS):
        # Use the centre of each cell: edges bleed under compression and resizing.
        c = gray[band // 4 : 3 * band // 4, b * cell + cell // 4 : (b + 1) * cell - cell // 4]
        if c.mean() > 127:
            value |= 1 << b
    return value


def write_barcode_video(
    path: str,
    num_frames: int,
    fps: int = 30,
    size: tuple[int, int] = (96, 128),
    codec: str = "libx264",
    gop: int = 12,
) -> str:
    """Encodes ``num_frames`` barcode frames to ``path`` (H.264 ``libx264`` or MPEG-4 ``mpeg4``),
    keyframe every ``gop`` frames, yuv420p."""
    h, w = size
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, mode="w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.gop_size = gop
        if codec == "libx264":
            s.options = {"crf": "12", "preset": "ultrafast", "bf": "2"}
        else:
            s.bit_rate = 4_000_000
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(barcode_frame(i, h, w), format="rgb24")
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def write_barcode_frames_dir(path: str, num_frames: int, size: tuple[int, int] = (96, 128)) -> str:
    """A directory of PNG frames ``frame_00000.png`` ... with the same barcodes."""
    os.makedirs(path, exist_ok=True)
    for i in range(num_frames):
        Image.fromarray(barcode_frame(i, *size)).save(os.path.join(path, f"frame_{i:05d}.png"))
    return path


def decoded_indices(frames: Sequence[np.ndarray] | np.ndarray) -> list[int]:
    return [read_barcode(np.asarray(f)) for f in frames]


def write_zero_frame_video(path: str, size: tuple[int, int] = (96, 128)) -> str:
    """A valid MP4 container with a video stream that holds no frames."""
    with av.open(path, mode="w") as c:
        s = c.add_stream("mpeg4", rate=30)
        s.width, s.height, s.pix_fmt = size[1], size[0], "yuv420p"
        c.start_encoding()  # writes the header; no frame is ever encoded
    return path


def write_truncated_video(src: str, dst: str, keep: float = 0.5) -> str:
    """The first ``keep`` fraction of the bytes of ``src`` (a download cut short)."""
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[: int(len(data) * keep)])
    return dst
