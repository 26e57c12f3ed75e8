"""Generate the procedural-scene dataset: scenes, videos, metadata, QA, eval files, stats.
The command is ``launch.make_dataset`` (it also writes the blind baselines):

    python -m launch.make_dataset --config configs/data_synthetic.py --out DIR
    python -m launch.make_dataset --config configs/data_synthetic.py:tiny --out DIR

Layout of DIR (video root for every file below; paths inside are relative to DIR):
  <dataset>/<scene>.mp4                        videos (VSI-Bench layout)
  color|depth/<split>/<scene>/<frame>.jpg|npz  per-frame colour, depth + instance mask
  metadata/<split>/<dataset>_metadata_<split>.json, <dataset>_frame_metadata_<split>.json
  qa/raw_<split>.json                          raw QA items (official fields)
  train_llava.json                             LLaVA-style training records (train split)
  vsibench_test.jsonl, vstibench_test.jsonl    benchmark-layout eval records (eval split)
  baselines/<bench>_<chance|prior|text_prior>.jsonl  blind-baseline predictions on the eval files
                                               (when ``make_dataset`` is given ``baselines``)
  stats.json, contact_sheet.png
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from data_pipeline import engine
from data_pipeline.engine.geometry import Box
from data_pipeline.scenes.writer import SceneSpec, generate_scene

# (train items, {"vsibench": records, "vstibench": records}, seed) -> {bench: {kind: {"samples", "scores"}}}
BaselinesFn = Callable[[list[dict], dict[str, list[dict]], int], dict]


def _room_kwargs(cfg) -> dict:
    r = cfg.room
    return {"width": tuple(r.width), "depth": tuple(r.depth), "n_categories": tuple(r.n_categories)}


def _work(args):
    spec, out_dir, room_kw, keep_preview = args
    t = time.perf_counter()
    res = generate_scene(spec, out_dir, room_kw)
    if not keep_preview:
        res.pop("preview")
        res.pop("room")
    res["seconds"] = time.perf_counter() - t
    return res


def scene_specs(cfg) -> list[SceneSpec]:
    """Scene i gets seed (cfg.seed, i); the eval scenes are a seeded random subset."""
    n = int(cfg.num_scenes)
    # both splits get at least one scene
    n_eval = min(n - 1, max(1, int(round(cfg.eval_fraction * n)))) if n > 1 else 0
    eval_idx = set(np.random.default_rng([cfg.seed, 7]).permutation(n)[:n_eval].tolist())
    return [SceneSpec(index=i, seed=int(cfg.seed), split="val" if i in eval_idx else "train", dataset=cfg.dataset,
                      num_frames=int(cfg.num_frames), fps=float(cfg.fps), width=int(cfg.width), height=int(cfg.height),
                      hfov_deg=float(cfg.hfov_deg), min_visible_frac=float(cfg.min_visible_frac),
                      write_color_frames=bool(cfg.write_color_frames), write_depth=bool(cfg.write_depth),
                      codec=str(cfg.codec)) for i in range(n)]


def _dump(path: str, obj, indent: int | None = 1) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=indent)


def _dump_jsonl(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def balanced_eval(items: list[dict], to_record, cap: int, seed: int) -> list[dict]:
    """At most ``cap`` records per benchmark question_type, picked with a seeded shuffle
    (so no task dominates the average), then ordered by (type, scene) with sequential ids."""
    by_type: dict[str, list[dict]] = {}
    for it in items:
        rec = to_record(it, 0)
        if rec is not None:
            by_type.setdefault(rec["question_type"], []).append(rec)
    rng = np.random.default_rng([seed, 11])
    out = []
    for t in sorted(by_type):
        recs = by_type[t]
        pick = rng.permutation(len(recs))[:cap]
        out.extend(recs[i] for i in sorted(pick))
    for i, r in enumerate(out):
        r["id"] = i
    return out


def answer_stats(items: list[dict]) -> dict:
    out: dict[str, dict] = {}
    by: dict[str, list[dict]] = {}
    for it in items:
        by.setdefault(it["question_type"], []).append(it)
    for t, its in sorted(by.items()):
        if engine.is_numeric(t):
            v = np.array([float(i["ground_truth"]) for i in its])
            out[t] = {"n": len(its), "mean": round(float(v.mean()), 3), "std": round(float(v.std()), 3),
                      "min": float(v.min()), "max": float(v.max())}
        else:
            out[t] = {"n": len(its), "letters": dict(sorted(Counter(i["mc_answer"] for i in its).items())),
                      "top_answers": dict(Counter(str(i["ground_truth"]) for i in its).most_common(4))}
    return out


def contact_sheet(path: str, scenes: list[dict]) -> None:
    """A few frames + a top-down map (room, object footprints, camera path) per scene."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Polygon


    if not scenes:
        return
    n_prev = len(scenes[0]["preview"])
    fig, axes = plt.subplots(len(scenes), n_prev + 1, figsize=(2.4 * (n_prev + 1), 2.5 * len(scenes)), squeeze=False)
    for r, sc in enumerate(scenes):
        for k in range(n_prev):
            axes[r, k].imshow(sc["preview"][k])
            axes[r, k].set_axis_off()
        axes[r, 0].set_title(sc["scene_name"], fontsize=8, loc="left")
        ax = axes[r, n_prev]
        sm = sc["scene_meta"]
        cx, cy = sm["room_center"][:2]
        ax.add_patch(Polygon(sc["room"].outline(), fill=False, lw=1.5))
        for cat, recs in sm["object_bboxes"].items():
            for rec in recs:
                b = Box(np.array(rec["centroid"]), np.array(rec["normalizedAxes"]).reshape(3, 3), np.array(rec["axesLengths"]))
                c = b.corners()
                hull = c[[0, 2, 6, 4], :2]
                ax.add_patch(Polygon(hull, alpha=0.4))
                ax.text(b.center[0], b.center[1], cat, fontsize=5, ha="center", va="center")
        cams = np.array([f["camera_pose_camera_to_world"] for f in sc["frame_meta"]["frames"]])
        ax.plot(cams[:, 0, 3], cams[:, 1, 3], "r.-", lw=0.8, ms=2)
        fwd = cams[:, :3, 2]
        ax.quiver(cams[::4, 0, 3], cams[::4, 1, 3], fwd[::4, 0], fwd[::4, 1], color="r", scale=12, width=0.006)
        ax.set_aspect("equal")
        ax.set_xlim(-0.3, 2 * cx + 0.3)
        ax.set_ylim(-0.3, 2 * cy + 0.3)
        ax.tick_params(labelsize=5)
        ax.set_title(f"top-down {2 * cx:.1f}x{2 * cy:.1f} m, {sm['room_size']:.1f} m2", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make_dataset(cfg, out_dir: str, progress: bool = True, baselines: BaselinesFn | None = None) -> dict:
    """Writes the dataset (layout in the module docstring); returns the stats dict. ``baselines``
    (e.g. :func:`vlm3r_jax.eval.baselines.dataset_baselines`) adds the blind-baseline predictions
    and their scores; evaluation code is not imported here, so the data engine stays below it."""
    from tqdm import tqdm

    if int(cfg.num_scenes) < 2 or not 0 < float(cfg.eval_fraction) < 1:
        raise ValueError(f"num_scenes={cfg.num_scenes}, eval_fraction={cfg.eval_fraction}: needs num_scenes >= 2 "
                         "and 0 < eval_fraction < 1, so that both splits get scenes")
    t0 = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    specs = scene_specs(cfg)
    n_sheet = int(cfg.contact_sheet_scenes)
    jobs = [(s, out_dir, _room_kwargs(cfg), s.index < n_sheet) for s in specs]
    results: list[dict] = []
    workers = max(1, int(cfg.num_workers))
    bar = tqdm(total=len(jobs), desc="scenes", unit="scene", disable=not progress)
    if workers == 1:
        for j in jobs:
            results.append(_work(j))
            bar.update()
    else:
        ctx = mp.get_context("fork")  # workers only run numpy/PyAV; no JAX state to protect
        with ctx.Pool(workers) as pool:
            for res in pool.imap(_work, jobs, chunksize=1):
                results.append(res)
                bar.update()
    bar.close()
    t_render = time.perf_counter() - t0

    # metadata files, official names
    split_of = {s.name: s.split for s in specs}
    for split in ("train", "val"):
        sm = {r["scene_name"]: r["scene_meta"] for r in results if split_of[r["scene_name"]] == split}
        fm = {r["scene_name"]: r["frame_meta"] for r in results if split_of[r["scene_name"]] == split}
        base = os.path.join(out_dir, "metadata", split)
        _dump(os.path.join(base, f"{cfg.dataset}_metadata_{split}.json"), sm)
        _dump(os.path.join(base, f"{cfg.dataset}_frame_metadata_{split}.json"), fm)

    # QA: one letter balancer per split, scenes in name order -> deterministic
    t1 = time.perf_counter()
    tasks = [t.strip() for t in str(cfg.tasks).split(",") if t.strip()] or None
    raw: dict[str, list[dict]] = {"train": [], "val": []}
    bals = {"train": engine.LetterBalancer(), "val": engine.LetterBalancer()}
    for r in tqdm(sorted(results, key=lambda r: r["scene_name"]), desc="qa", unit="scene", disable=not progress):
        split = split_of[r["scene_name"]]
        raw[split].extend(engine.generate_qa(r["scene_meta"], r["frame_meta"], seed=int(cfg.seed),
                                             scene_name=r["scene_name"], tasks=tasks,
                                             num_per_task=int(cfg.num_per_task), balancer=bals[split]))
    for split, items in raw.items():
        _dump(os.path.join(out_dir, "qa", f"raw_{split}.json"), items)
    _dump(os.path.join(out_dir, "train_llava.json"), [engine.to_training_record(i) for i in raw["train"]])
    vsi = balanced_eval(raw["val"], engine.to_vsibench_record, int(cfg.eval_per_task), int(cfg.seed))
    vsti = balanced_eval(raw["val"], engine.to_vstibench_record, int(cfg.eval_per_task), int(cfg.seed))
    _dump_jsonl(os.path.join(out_dir, "vsibench_test.jsonl"), vsi)
    _dump_jsonl(os.path.join(out_dir, "vstibench_test.jsonl"), vsti)
    t_qa = time.perf_counter() - t1

    bl = baselines(raw["train"], {"vsibench": vsi, "vstibench": vsti}, int(cfg.seed)) if baselines else {}
    bl_scores = {}
    for bench, kinds in bl.items():
        for kind, res in kinds.items():
            _dump_jsonl(os.path.join(out_dir, "baselines", f"{bench}_{kind}.jsonl"), res["samples"])
            bl_scores[f"{bench}_{kind}"] = res["scores"]

    contact_sheet(os.path.join(out_dir, "contact_sheet.png"),
                  [r for r in sorted(results, key=lambda r: r["scene_name"]) if "preview" in r][:n_sheet])
    secs = [r["seconds"] for r in results]
    stats = {
        "scenes": {"total": len(results), "train": sum(s.split == "train" for s in specs),
                   "val": sum(s.split == "val" for s in specs)},
        "frames_per_scene": int(cfg.num_frames), "resolution": [int(cfg.height), int(cfg.width)],
        "timing_s": {"render_and_write_wall": round(t_render, 2), "qa_and_formats_wall": round(t_qa, 2),
                     "per_scene_worker_mean": round(float(np.mean(secs)), 3) if secs else 0.0, "workers": workers},
        "qa_per_task": {split: dict(sorted(Counter(i["question_type"] for i in items).items()))
                        for split, items in raw.items()},
        "eval_records": {"vsibench": dict(sorted(Counter(r["question_type"] for r in vsi).items())),
                         "vstibench": dict(sorted(Counter(r["question_type"] for r in vsti).items()))},
        "answers_train": answer_stats(raw["train"]),
        "answers_val": answer_stats(raw["val"]),
        "baseline_scores": bl_scores,
        "objects_per_scene_mean": round(float(np.mean([sum(r["scene_meta"]["object_counts"].values())
                                                       for r in results])), 2) if results else 0.0,
        "config": cfg.to_dict(),
    }
    _dump(os.path.join(out_dir, "stats.json"), stats, indent=1)
    return stats
