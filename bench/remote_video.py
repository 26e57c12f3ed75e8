"""A video on ``gs://``: PyAV streaming through a gcsfs file object vs our fetch to a bounded local
copy (vlm3r_jax/fetch_cache.py), against the local GCS emulator of the tests (no cloud needed)::

    python bench/remote_video.py                    # 19 MB 640x480 60-s clip, 32 frames, 0 ms latency
    python bench/remote_video.py --latency-ms 30 --no-stream   # a real bucket's time to first byte

Prints seconds and HTTP requests (counted by the emulator) for: a local decode, streaming (epath's
file object handed to ``av.open``), the fetch cache cold (download + decode) and warm (metadata
request + decode). Numbers: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from _gcs import BUCKET, start_emulator  # noqa: E402 - the tests' emulator launcher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--no-stream", action="store_true", help="skip streaming (hundreds of requests)")
    ap.add_argument("--frames", type=int, default=32)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="remote-video-bench-")
    log = os.path.join(work, "requests.log")
    proc, url = start_emulator({"GCS_EMULATOR_LATENCY_MS": str(args.latency_ms), "GCS_EMULATOR_LOG": log})
    os.environ.update({"STORAGE_EMULATOR_HOST": url, "GOOGLE_CLOUD_PROJECT": "bench", "GCE_METADATA_HOST": "127.0.0.1:1",
                       "VLM3R_FETCH_CACHE": os.path.join(work, "cache")})
    import logging

    logging.disable(logging.WARNING)  # gcsfs warns about missing credentials on every bucket lookup
    import numpy as np
    from etils import epath

    from data_pipeline import video as V
    from data_pipeline.synthetic_video import write_barcode_video

    local = os.path.join(work, "clip.mp4")
    write_barcode_video(local, 1800, fps=30, size=(480, 640), gop=30)
    uri = f"gs://{BUCKET}/clip.mp4"
    with open(local, "rb") as f:
        epath.Path(uri).write_bytes(f.read())

    def requests() -> int:
        with open(log) as f:
            return sum(1 for _ in f)

    def timed(name: str, fn) -> None:
        r0, t = requests(), time.perf_counter()
        frames = fn()
        print(f"{name:28s} {time.perf_counter() - t:7.2f} s  {requests() - r0:4d} requests  "
              f"same frames: {np.array_equal(frames, ref)}")

    t = time.perf_counter()
    ref = V.load_video(local, args.frames).frames
    print(f"clip {os.path.getsize(local) / 1e6:.1f} MB, {args.frames} frames, {args.latency_ms} ms per request")
    print(f"{'local decode':28s} {time.perf_counter() - t:7.2f} s")
    if not args.no_stream:
        def stream():
            with epath.Path(uri).open("rb") as f:  # PyAV reads through the gcsfs file object
                index, _ = V.index_packets(uri, f)
                return V.read_frames(uri, V.sample_indices(len(index.pts), args.frames), index, src=f)

        timed("stream (gcsfs file object)", stream)
    timed("fetch cache, cold", lambda: V.load_video(uri, args.frames).frames)
    timed("fetch cache, warm", lambda: V.load_video(uri, args.frames).frames)
    proc.terminate()


if __name__ == "__main__":
    main()
