"""Procedural scene generation speed: render + write N scenes of F frames at HxW.

Target (issue 5): 200 scenes x 32 frames at 256x256 in < 5 minutes on 2 cores.

    python bench/scene_generation.py                    # the target setting, 2 workers
    python bench/scene_generation.py --small            # quick check (8 scenes)
    python bench/scene_generation.py --scenes 40 --workers 1 --no-write

Prints one JSON line: wall seconds, scenes/s, frames/s, CPU seconds (load-independent; with
the wall time they would take on 2 idle cores), the per-stage split of one scene
(room+trajectory, render, write), the machine load average at start and end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from data_pipeline.scenes.camera import walkthrough  # noqa: E402
from data_pipeline.scenes.render import Intrinsics, Renderer  # noqa: E402
from data_pipeline.scenes.room import generate_room  # noqa: E402
from data_pipeline.scenes.writer import SceneSpec, frame_metadata, generate_scene, write_scene_files  # noqa: E402


def _one(args):
    spec, out = args
    generate_scene(spec, out)
    return spec.index


def stage_split(spec: SceneSpec, out: str | None) -> dict:
    t0 = time.perf_counter()
    rng = np.random.default_rng([spec.seed, spec.index])
    room = generate_room(rng)
    poses = walkthrough(room, rng, spec.num_frames, spec.fps)
    t1 = time.perf_counter()
    r = Renderer(room, Intrinsics.from_fov(spec.width, spec.height, spec.hfov_deg))
    outs = [r.render(p) for p in poses]
    t2 = time.perf_counter()
    rgb, depth, inst = (np.stack([o[k] for o in outs]) for k in range(3))
    fmeta = frame_metadata(spec, r.intr, poses, inst)
    t3 = time.perf_counter()
    if out is not None:
        write_scene_files(out, spec, f"{spec.dataset}/{spec.name}.mp4", rgb, depth, inst, fmeta)
    t4 = time.perf_counter()
    return {"room_and_trajectory_s": round(t1 - t0, 4), "render_s": round(t2 - t1, 4),
            "render_ms_per_frame": round(1000 * (t2 - t1) / spec.num_frames, 2),
            "metadata_s": round(t3 - t2, 4), "write_s": round(t4 - t3, 4), "parts": r.parts.n}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="render only (no mp4/jpg/npz)")
    ap.add_argument("--small", action="store_true", help="8 scenes: just check that it runs")
    a = ap.parse_args()
    if a.small:
        a.scenes = 8
    load0 = os.getloadavg()
    import resource

    def cpu_s():
        r = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        return sum(x.ru_utime + x.ru_stime for x in r)

    with tempfile.TemporaryDirectory() as tmp:
        out = None if a.no_write else tmp
        specs = [SceneSpec(index=i, seed=0, num_frames=a.frames, width=a.size, height=a.size) for i in range(a.scenes)]
        split = stage_split(SceneSpec(index=10_000, seed=0, num_frames=a.frames, width=a.size, height=a.size), out)
        t, c0 = time.perf_counter(), cpu_s()
        if a.workers > 1:
            with mp.get_context("fork").Pool(a.workers) as pool:
                list(pool.imap_unordered(_one, [(s, out) for s in specs]))
        else:
            for s in specs:
                _one((s, out))
        wall = time.perf_counter() - t
        cpu = cpu_s() - c0
    print(json.dumps({
        "scenes": a.scenes, "frames": a.frames, "size": a.size, "workers": a.workers, "write": not a.no_write,
        "wall_s": round(wall, 2), "scenes_per_s": round(a.scenes / wall, 3),
        "frames_per_s": round(a.scenes * a.frames / wall, 1),
        "projected_200x32_s": round(wall / a.scenes * 200 * a.frames / 32, 1),
        # load-independent: CPU seconds used, and the wall time they mean on 2 idle cores
        "cpu_s": round(cpu, 1), "cpu_s_per_scene": round(cpu / a.scenes, 3),
        "projected_200x32_idle_2core_s": round(cpu / a.scenes * 200 * a.frames / 32 / 2, 1),
        "one_scene": split, "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
