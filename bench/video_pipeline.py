"""Video pipeline throughput: our Grain pipeline (seek-based decode, N workers) vs a naive loop
that decodes every frame with PyAV and keeps the 32 sampled ones; both produce both views.

Full run (issue 4): 64 generated 60-s 640x480 30-fps clips, 32 frames each::

    python bench/video_pipeline.py                       # ~10 min incl. clip generation (cached)
    python bench/video_pipeline.py --small               # smoke: 4 clips of 3 s, 320x240

Prints frames/s for: naive loop (1 process), our decode in-process (0 workers), our pipeline
with ``--workers`` processes; plus seconds per batch to compare with a train step
(``--step-seconds``: the tiny demo's measured step time, if known).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from data_pipeline.pipeline import PipelineConfig, make_iterator  # noqa: E402
from data_pipeline.sources import LlavaJsonSource  # noqa: E402
from data_pipeline.synthetic_video import write_barcode_video  # noqa: E402
from data_pipeline.video import index_packets, read_frames_full, sample_indices  # noqa: E402
from data_pipeline.views import ViewConfig, make_views  # noqa: E402


def make_clips(root: str, n: int, seconds: float, size: tuple[int, int], fps: int, gop: int) -> list[str]:
    os.makedirs(root, exist_ok=True)
    paths = []
    for i in range(n):
        p = os.path.join(root, f"clip{i:03d}_{size[1]}x{size[0]}_{seconds}s_g{gop}.mp4")
        if not os.path.exists(p):
            write_barcode_video(p + ".tmp.mp4", int(seconds * fps), fps=fps, size=size, gop=gop)
            os.replace(p + ".tmp.mp4", p)
        paths.append(p)
    return paths


def naive(paths: list[str], num_frames: int, views: ViewConfig) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process incl. decoder threads)."""
    t, c = time.perf_counter(), time.process_time()
    for p in paths:
        total = len(index_packets(p)[0].pts)
        frames = read_frames_full(p, sample_indices(total, num_frames))  # decodes every frame
        make_views(frames, views)
    return time.perf_counter() - t, time.process_time() - c


def ours(src: LlavaJsonSource, tok, cfg: PipelineConfig) -> tuple[float, float, int, float]:
    """(seconds to the first batch, seconds for the rest, number of batches, CPU seconds of this
    process; worker processes' CPU is not included)."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    with make_iterator(src, tok, cfg, shard=(0, 1), log_fn=lambda s: None) as it:
        next(it)
        t1 = time.perf_counter()
        n = 1 + sum(1 for _ in it)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, n, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="4 clips of 3 s at 320x240 (smoke run)")
    ap.add_argument("--videos", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--gop", type=int, default=250, help="keyframe interval (ffmpeg/x264 default 250)")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--siglip", type=int, default=384)
    ap.add_argument("--geometry", type=int, default=432)
    ap.add_argument("--cache", default="/tmp/vlm3r_bench_videos")
    ap.add_argument("--step-seconds", type=float, default=None, help="train-step time to compare against")
    a = ap.parse_args()
    if a.small:
        a.videos, a.seconds, a.size = 4, 3.0, (240, 320)

    t = time.perf_counter()
    paths = make_clips(a.cache, a.videos, a.seconds, tuple(a.size), a.fps, a.gop)
    print(f"clips ready in {time.perf_counter() - t:.1f}s: {a.videos} x {a.seconds}s {a.size[1]}x{a.size[0]} "
          f"@{a.fps}fps gop {a.gop}")
    ann = os.path.join(a.cache, f"bench_{a.videos}_{a.seconds}_{a.size[0]}_{a.gop}.jsonl")
    with open(ann, "w") as f:
        for i, p in enumerate(paths):
            f.write(json.dumps({"id": str(i), "video": os.path.basename(p), "conversations": [
                {"from": "human", "value": "<image>\nHow many chairs are in the room?"}, {"from": "gpt", "value": "3"}]})
                    + "\n")
    # The tokenizer does not matter for decode speed; build the tiny one the tests use.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from test_tokenizer import build_small_tokenizer

    from data_pipeline.tokenizer import QwenTokenizer

    tok = QwenTokenizer.from_dir(build_small_tokenizer(os.path.join(a.cache, "tok")))
    src = LlavaJsonSource(ann, a.cache)
    views = ViewConfig(a.siglip, a.geometry)
    n_frames = a.videos * a.frames

    t_naive, c_naive = naive(paths, a.frames, views)
    base = dict(num_frames=a.frames, siglip_size=a.siglip, geometry_size=a.geometry, batch_size=a.batch,
                shuffle=False, drop_remainder=False, length_buckets=(128,), video_tokens_per_frame=1)
    f0, r0, _, c0 = ours(src, tok, PipelineConfig(**base, worker_count=0))
    fw, rw, nb, _ = ours(src, tok, PipelineConfig(**base, worker_count=a.workers))
    rows = [
        ("naive (decode all frames, 1 proc)", t_naive, c_naive),
        ("ours, in-process (seek decode)", f0 + r0, c0),
        (f"ours, {a.workers} workers (incl. start-up)", fw + rw, float("nan")),
    ]
    # CPU seconds compare the work done independently of other load on the machine.
    print(f"{'pipeline':44s} {'wall s':>8s} {'frames/s':>9s} {'vs naive':>8s} {'CPU s':>8s}")
    for name, s, c in rows:
        print(f"{name:44s} {s:8.2f} {n_frames / s:9.1f} {t_naive / s:7.2f}x {c:8.2f}")
    steady = rw / max(nb - 1, 1)
    print(f"{a.workers} workers: first batch after {fw:.2f}s (worker start-up), then {steady:.3f}s per batch of "
          f"{a.batch} ({a.batch * a.frames / steady:.1f} frames/s steady state)")
    # The target: our pipeline (workers) >= 2x the naive loop's frames/s.
    naive_fps = n_frames / t_naive
    ratio_total = t_naive / (fw + rw)
    ratio_steady = (a.batch * a.frames / steady) / naive_fps
    verdict = "met" if ratio_steady >= 2.0 else "NOT met"
    print(f"ratio vs naive: {ratio_steady:.2f}x steady state with {a.workers} workers ({ratio_total:.2f}x incl. "
          f"worker start-up, {t_naive / (f0 + r0):.2f}x in-process); target >= 2x: {verdict}"
          + (" (smoke run: clips too short to mean anything)" if a.small else ""))
    if a.step_seconds:
        verdict = "keeps up" if steady <= a.step_seconds else "is SLOWER than"
        print(f"pipeline {verdict} a {a.step_seconds:.3f}s train step")
    print(f"cpu cores visible: {os.cpu_count()}; load avg {np.round(os.getloadavg(), 2).tolist()}")


if __name__ == "__main__":
    main()
