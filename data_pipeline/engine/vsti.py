"""The 5 VSTI-Bench task families (per-frame camera/object geometry over time).

"frame k of N": k is the 1-based rank among frames with a valid pose (sorted by frame_id),
N the total number of frames listed in the frame metadata; ``frame_indices`` holds the
frames' ``frame_id`` values, as officially.

Camera position = translation column ``t`` of the camera-to-world pose (NOT the official
displacement generators' ``-R^T t``; see docs/data_engine.md and tests/test_engine_vsti.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from data_pipeline.engine import templates as T
from data_pipeline.engine.geometry import camera_center, point_box_distance, world_to_camera
from data_pipeline.engine.metadata import Frame, Scene
from data_pipeline.engine.options import LetterBalancer, lettered, numeric_options


@dataclass
class VSTIConfig:
    cam_obj_min: float = 0.2  # camera_obj_abs_dist answer range (m)
    cam_obj_max: float = 10.0
    rel_dist_min: float = 0.5  # camera_obj_rel_dist: candidates at least this far
    rel_dist_margin: float = 0.15  # and pairwise this different
    rel_pos_threshold: float = 0.15  # obj_obj_relative_pos: separation along the axis (m)
    disp_min_gap: int = 5  # camera_displacement: 5 <= j - i <= 30, 0.2 <= d <= 10 m
    disp_max_gap: int = 30
    disp_min: float = 0.2
    disp_max: float = 10.0
    direction_threshold: float = 1.0  # camera_movement_direction: |dx| or |dz| above this (m)
    direction_dominance: float = 1.25  # ours: dominant axis must beat the other by this factor


def _frame_desc(scene: Scene, fr: Frame) -> str:
    return f"frame {fr.rank + 1} of {scene.num_frames_total}"


def _base(scene: Scene, qtype: str, frame_ids: list[int]) -> dict:
    return {"dataset": scene.dataset, "scene_name": scene.name, "video_path": scene.video_path,
            "frame_indices": [int(f) for f in frame_ids], "question_type": qtype}


def _frame_unique(scene: Scene, fr: Frame) -> list[int]:
    """Visible instances whose category appears exactly once among the visible ones (the
    object is then unambiguous *in that frame*, the official rule)."""
    cats = [scene.inst2cat[i] for i in fr.visible]
    return [i for i, c in zip(fr.visible, cats) if cats.count(c) == 1]


def _shuffled(rng, xs):
    return [xs[i] for i in rng.permutation(len(xs))]


def camera_obj_abs_dist(scene: Scene, rng, n: int, bal: LetterBalancer, cfg: VSTIConfig) -> list[dict]:
    cands = []
    for fr in scene.frames:
        if fr.pose is None:
            continue
        cam = camera_center(fr.pose)
        for iid in _frame_unique(scene, fr):
            d = float(point_box_distance(cam[None], scene.inst2box[iid])[0])
            if cfg.cam_obj_min <= d <= cfg.cam_obj_max:
                cands.append((fr, iid, round(d, 1)))
    out = []
    for fr, iid, gt in _shuffled(rng, cands):
        opts = numeric_options(gt, rng)
        if opts is None:
            continue
        opts, letter = bal.place("camera_obj_abs_dist", opts, gt, rng)
        item = _base(scene, "camera_obj_abs_dist", [fr.frame_id])
        item["question"] = T.CAMERA_OBJ_DIST.format(object_name=scene.inst2cat[iid], frame_description=_frame_desc(scene, fr))
        item.update(options=lettered(opts), ground_truth=gt, mc_answer=letter)
        out.append(item)
        if len(out) >= n:
            break
    return out


def _cam_rel_dist(k: int):
    qtype = f"camera_obj_rel_dist_v{ {4: 1, 3: 2, 2: 3}[k] }"

    def gen(scene: Scene, rng, n: int, bal: LetterBalancer, cfg: VSTIConfig) -> list[dict]:
        out = []
        for fr in _shuffled(rng, scene.frames):
            if fr.pose is None:
                continue
            cam = camera_center(fr.pose)
            cands = []
            for iid in _frame_unique(scene, fr):
                d = float(point_box_distance(cam[None], scene.inst2box[iid])[0])
                if d >= cfg.rel_dist_min:
                    cands.append((scene.inst2cat[iid], d))
            if len(cands) < k:
                continue
            cands.sort(key=lambda x: x[1])
            chosen = [cands[0]]
            for c in _shuffled(rng, cands[1:]):
                if all(abs(c[1] - x[1]) >= cfg.rel_dist_margin for x in chosen):
                    chosen.append(c)
                if len(chosen) == k:
                    break
            if len(chosen) < k:
                continue
            gt = chosen[0][0]
            opts, letter = bal.place(qtype, [c[0] for c in chosen], gt, rng)
            names = dict(zip(("choice_a", "choice_b", "choice_c", "choice_d"), opts))
            item = _base(scene, qtype, [fr.frame_id])
            item["question"] = T.CAMERA_OBJ_REL_DIST[k].format(frame_description=_frame_desc(scene, fr), **names)
            item.update(options=lettered(opts), ground_truth=gt, mc_answer=letter)
            out.append(item)
            if len(out) >= n:
                break
        return out

    gen.__name__ = qtype
    return gen


camera_obj_rel_dist_v1 = _cam_rel_dist(4)
camera_obj_rel_dist_v2 = _cam_rel_dist(3)
camera_obj_rel_dist_v3 = _cam_rel_dist(2)

_POS = {"nf": (2, ("Near", "Far")), "lr": (0, ("Left", "Right")), "ud": (1, ("Up", "Down"))}


def relative_position_answer(box_a, box_b, pose_c2w, dim: str, threshold: float = 0.15) -> str | None:
    """Relation of A to B in the camera axes of one frame (OpenCV: +x right, +y down,
    +z forward): "Near"/"Left"/"Up" when A's corners all lie more than ``threshold`` below
    B's along z/x/y, "Far"/"Right"/"Down" for the opposite, None when not fully separated."""
    axis, (lo_name, hi_name) = _POS[dim]
    ca = world_to_camera(box_a.corners(), pose_c2w)[:, axis]
    cb = world_to_camera(box_b.corners(), pose_c2w)[:, axis]
    if cb.min() - ca.max() > threshold:
        return lo_name
    if ca.min() - cb.max() > threshold:
        return hi_name
    return None


def _rel_pos(dim: str):
    qtype = f"obj_obj_relative_pos_{dim}"

    def gen(scene: Scene, rng, n: int, bal: LetterBalancer, cfg: VSTIConfig) -> list[dict]:
        cands = []
        for fr in scene.frames:
            for a, b in itertools.combinations(_frame_unique(scene, fr), 2):
                cands.append((fr, a, b))
        out = []
        for fr, a, b in _shuffled(rng, cands):
            if rng.random() < 0.5:
                a, b = b, a
            if fr.pose is None:
                continue
            gt = relative_position_answer(scene.inst2box[a], scene.inst2box[b], fr.pose, dim, cfg.rel_pos_threshold)
            if gt is None:
                continue
            opts, letter = bal.place(qtype, list(_POS[dim][1]), gt, rng)
            item = _base(scene, qtype, [fr.frame_id])
            item["question"] = T.OBJ_OBJ_REL_POS[dim].format(frame_description=_frame_desc(scene, fr),
                                                             obj_A_name=scene.inst2cat[a], obj_B_name=scene.inst2cat[b])
            item.update(options=lettered(opts), ground_truth=gt, mc_answer=letter)
            out.append(item)
            if len(out) >= n:
                break
        return out

    gen.__name__ = qtype
    return gen


obj_obj_relative_pos_nf = _rel_pos("nf")
obj_obj_relative_pos_lr = _rel_pos("lr")
obj_obj_relative_pos_ud = _rel_pos("ud")


def _pair_desc(scene: Scene, f0: Frame, f1: Frame) -> dict:
    return {"start_frame_description": f"frame {f0.rank + 1}",
            "end_frame_description": f"frame {f1.rank + 1} of {scene.num_frames_total}"}


def camera_displacement(scene: Scene, rng, n: int, bal: LetterBalancer, cfg: VSTIConfig) -> list[dict]:
    fr = scene.frames
    pairs = [(i, j) for i in range(len(fr)) for j in range(i + 1, len(fr))
             if cfg.disp_min_gap <= j - i <= cfg.disp_max_gap]
    out = []
    for i, j in _shuffled(rng, pairs):
        if fr[i].pose is None or fr[j].pose is None:
            continue
        d = float(np.linalg.norm(camera_center(fr[j].pose) - camera_center(fr[i].pose)))
        if not cfg.disp_min <= d <= cfg.disp_max:
            continue
        gt = round(d, 1)
        opts = numeric_options(gt, rng)
        if opts is None:
            continue
        opts, letter = bal.place("camera_displacement", opts, gt, rng)
        item = _base(scene, "camera_displacement", [fr[i].frame_id, fr[j].frame_id])
        item["question"] = T.CAMERA_DISPLACEMENT.format(**_pair_desc(scene, fr[i], fr[j]))
        item.update(options=lettered(opts), ground_truth=gt, mc_answer=letter)
        out.append(item)
        if len(out) >= n:
            break
    return out


def movement_direction(pose_start, pose_end, threshold: float = 1.0, dominance: float = 1.0) -> str | None:
    """Dominant direction of the net camera translation, in the start frame's camera axes:
    "Forward"/"Backward" (z) or "Left"/"Right" (x); y (up/down) ignored; z wins ties; None
    when neither |dx| nor |dz| exceeds ``threshold`` or the larger is not ``dominance`` times
    the other (when both pass the threshold)."""
    disp = camera_center(pose_end) - camera_center(pose_start)
    dx, _, dz = np.asarray(pose_start, float)[:3, :3].T @ disp
    sx, sz = abs(dx) > threshold, abs(dz) > threshold
    if not (sx or sz):
        return None
    if sx and sz:
        big, small = max(abs(dx), abs(dz)), min(abs(dx), abs(dz))
        if big < dominance * small:
            return None
        use_z = abs(dz) >= abs(dx)
    else:
        use_z = sz
    if use_z:
        return "Forward" if dz > 0 else "Backward"
    return "Right" if dx > 0 else "Left"


_DIRECTIONS = ["Forward", "Backward", "Left", "Right"]


def _move_dir(k: int):
    qtype = f"camera_movement_direction_v{ {4: 1, 3: 2, 2: 3}[k] }"

    def gen(scene: Scene, rng, n: int, bal: LetterBalancer, cfg: VSTIConfig) -> list[dict]:
        fr = scene.frames
        pairs = [(i, j) for i in range(len(fr)) for j in range(i + 1, len(fr))]
        out = []
        for i, j in _shuffled(rng, pairs):
            if fr[i].pose is None or fr[j].pose is None:
                continue
            gt = movement_direction(fr[i].pose, fr[j].pose, cfg.direction_threshold, cfg.direction_dominance)
            if gt is None:
                continue
            wrong = [d for d in _DIRECTIONS if d != gt]
            pick = [wrong[t] for t in rng.choice(3, size=k - 1, replace=False)]
            opts, letter = bal.place(qtype, [gt, *pick], gt, rng)
            names = dict(zip(("choice_a", "choice_b", "choice_c", "choice_d"), opts))
            item = _base(scene, qtype, [fr[i].frame_id, fr[j].frame_id])
            item["question"] = T.CAMERA_MOVEMENT_DIRECTION[k].format(**_pair_desc(scene, fr[i], fr[j]), **names)
            item.update(options=lettered(opts), ground_truth=gt, mc_answer=letter)
            out.append(item)
            if len(out) >= n:
                break
        return out

    gen.__name__ = qtype
    return gen


camera_movement_direction_v1 = _move_dir(4)
camera_movement_direction_v2 = _move_dir(3)
camera_movement_direction_v3 = _move_dir(2)
