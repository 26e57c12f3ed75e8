"""Validation and parsing of the official VLM-3R metadata layout (``vlm_3r_data_process``).

Scene metadata (one scene; the official files key many scenes by scene id)::

    {"video_path", "dataset", "room_size" (m^2), "room_center" [3],
     "object_counts" {category: n},
     "object_bboxes" {category: [{"centroid" [3], "axesLengths" [3],
                                  "normalizedAxes" [9] or [3][3] (rows = unit axes),
                                  "min" [3], "max" [3], "instance_id" int}]}}

Frame metadata (same scene)::

    {"camera_intrinsics" {fx, fy, cx, cy}, "img_width", "img_height", ["fps"],
     "frames" [{"frame_id", "file_path_color", "file_path_depth",
                "camera_pose_camera_to_world" [4][4], "bboxes_2d" [{"instance_id", "bbox_2d"}]}]}

Every problem raises :class:`MetadataError` naming the scene and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from data_pipeline.engine.geometry import Box, pairwise_box_distances

# frames per second of the official source videos (trajectory_utils.FRAME_CATEGORY_FPS_LOOKUP_TABLE)
FPS_LOOKUP = {"scannet": 24.0, "scannetpp": 30.0, "arkitscenes": 10.0}


class MetadataError(ValueError):
    """Bad scene/frame metadata; the message names the scene, the field and the fix."""


@dataclass
class Frame:
    frame_id: int
    rank: int  # 0-based position among frames with a valid pose, sorted by frame_id
    pose: np.ndarray | None  # [4, 4] camera-to-world; None where the scan lost the camera (non-finite)
    visible: list[int]  # instance ids with a 2D box in this frame (known instances only)


@dataclass
class Scene:
    name: str
    dataset: str
    video_path: str
    room_size: float
    room_center: list[float]
    counts: dict[str, int]
    boxes: dict[str, list[Box]]  # category -> instance boxes
    inst2cat: dict[int, str]
    inst2box: dict[int, Box]
    frames: list[Frame] = field(default_factory=list)
    num_frames_total: int = 0
    fps: float | None = None
    _dist_cache: dict = field(default_factory=dict, repr=False)

    def category_distance(self, a: str, b: str) -> float:
        """Exact closest-point distance between two categories (min over their instances).
        All instance pairs are computed once, vectorised, on first use."""
        if "matrix" not in self._dist_cache:
            ids = sorted(self.inst2box)
            self._dist_cache["index"] = {c: [ids.index(i) for i, cc in self.inst2cat.items() if cc == c]
                                         for c in self.boxes}
            self._dist_cache["matrix"] = pairwise_box_distances([self.inst2box[i] for i in ids])
        ia, ib = self._dist_cache["index"][a], self._dist_cache["index"][b]
        return float(self._dist_cache["matrix"][np.ix_(ia, ib)].min())

    @property
    def unique_categories(self) -> list[str]:
        """Categories with exactly one instance (the official 'single-count objects')."""
        return [c for c, n in self.counts.items() if n == 1]


def _err(scene: str, fld: str, msg: str) -> MetadataError:
    return MetadataError(f"scene '{scene}': field '{fld}': {msg}")


def _vec(scene: str, fld: str, v, n: int, finite: bool = True) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=float).reshape(-1)
    except (TypeError, ValueError) as e:
        raise _err(scene, fld, f"expected {n} numbers, got {v!r}") from e
    if a.size != n:
        raise _err(scene, fld, f"expected {n} numbers, got {a.size}")
    if finite and not np.all(np.isfinite(a)):
        raise _err(scene, fld, f"non-finite value in {a.tolist()}")
    return a


def parse_box(scene: str, fld: str, rec: dict) -> tuple[int, Box]:
    if not isinstance(rec, dict):
        raise _err(scene, fld, f"expected a dict with centroid/axesLengths/normalizedAxes/instance_id, got {type(rec).__name__}")
    for k in ("centroid", "axesLengths", "normalizedAxes", "instance_id"):
        if k not in rec:
            raise _err(scene, f"{fld}.{k}", "missing (required by the official bbox layout)")
    c = _vec(scene, f"{fld}.centroid", rec["centroid"], 3)
    ln = _vec(scene, f"{fld}.axesLengths", rec["axesLengths"], 3)
    ax = _vec(scene, f"{fld}.normalizedAxes", rec["normalizedAxes"], 9).reshape(3, 3)
    if np.any(ln <= 1e-4):
        raise _err(scene, f"{fld}.axesLengths", f"degenerate box {ln.tolist()}: every side must be > 0.1 mm")
    if not np.allclose(ax @ ax.T, np.eye(3), atol=1e-3):
        raise _err(scene, f"{fld}.normalizedAxes", "rows must be orthonormal unit axes (open3d R.T, flattened)")
    try:
        iid = int(rec["instance_id"])
    except (TypeError, ValueError) as e:
        raise _err(scene, f"{fld}.instance_id", f"not an integer: {rec['instance_id']!r}") from e
    return iid, Box(c, ax, ln)


def unwrap_scene(scene_meta: dict, scene_name: str | None = None) -> tuple[str, dict]:
    """Accept one scene's dict, or an official file dict ``{scene_id: {...}}`` with one scene."""
    if not isinstance(scene_meta, dict):
        raise MetadataError(f"scene metadata must be a dict, got {type(scene_meta).__name__}")
    if "object_bboxes" not in scene_meta and len(scene_meta) == 1:
        (k, v), = scene_meta.items()
        if isinstance(v, dict):
            return str(k), v
    name = scene_name or scene_meta.get("scene_name")
    if not name:
        vp = str(scene_meta.get("video_path", ""))
        name = vp.rsplit("/", 1)[-1].rsplit(".", 1)[0] or "<unnamed>"
    return str(name), scene_meta


def parse(scene_meta: dict, frame_meta: dict | None, scene_name: str | None = None) -> Scene:
    """Validate both dicts and build a :class:`Scene` (frames sorted by ``frame_id``)."""
    name, sm = unwrap_scene(scene_meta, scene_name)
    if frame_meta is not None and "frames" not in frame_meta and len(frame_meta) == 1:
        (_, frame_meta), = frame_meta.items()
    for k in ("video_path", "dataset", "room_size", "room_center", "object_counts", "object_bboxes"):
        if k not in sm:
            raise _err(name, k, "missing from the scene metadata (official layout: video_path, dataset, room_size, "
                                "room_center, object_counts, object_bboxes)")
    try:
        room_size = float(sm["room_size"])
    except (TypeError, ValueError) as e:
        raise _err(name, "room_size", f"not a number: {sm['room_size']!r}") from e
    if not math.isfinite(room_size) or room_size <= 0:
        raise _err(name, "room_size", f"must be a positive area in m^2, got {room_size}")
    center = _vec(name, "room_center", sm["room_center"], 3).tolist()
    counts_in = sm["object_counts"]
    boxes_in = sm["object_bboxes"]
    if not isinstance(counts_in, dict):
        raise _err(name, "object_counts", "must be a dict {category: count}")
    if not isinstance(boxes_in, dict):
        raise _err(name, "object_bboxes", "must be a dict {category: [box, ...]}")
    counts: dict[str, int] = {}
    boxes: dict[str, list[Box]] = {}
    inst2cat: dict[int, str] = {}
    inst2box: dict[int, Box] = {}
    for cat, n in counts_in.items():
        if cat not in boxes_in:
            raise _err(name, f"object_bboxes['{cat}']", f"missing, but object_counts['{cat}'] = {n}")
        recs = boxes_in[cat]
        if not isinstance(recs, list) or not recs:
            raise _err(name, f"object_bboxes['{cat}']", "must be a non-empty list of boxes")
        if int(n) != len(recs):
            raise _err(name, f"object_counts['{cat}']", f"is {n} but object_bboxes['{cat}'] has {len(recs)} boxes")
        counts[cat] = int(n)
        boxes[cat] = []
        for i, rec in enumerate(recs):
            iid, box = parse_box(name, f"object_bboxes['{cat}'][{i}]", rec)
            if iid in inst2cat:
                raise _err(name, f"object_bboxes['{cat}'][{i}].instance_id", f"{iid} is already used by '{inst2cat[iid]}'")
            inst2cat[iid] = cat
            inst2box[iid] = box
            boxes[cat].append(box)
    extra = set(boxes_in) - set(counts_in)
    if extra:
        raise _err(name, "object_counts", f"has no entry for categories {sorted(extra)} present in object_bboxes")
    scene = Scene(name, str(sm["dataset"]), str(sm["video_path"]), room_size, center, counts, boxes, inst2cat, inst2box)
    if frame_meta is None:
        return scene
    if not isinstance(frame_meta, dict) or "frames" not in frame_meta:
        raise _err(name, "frames", "missing from the frame metadata (official layout: camera_intrinsics, img_width, "
                                   "img_height, frames)")
    frames_in = frame_meta["frames"]
    if not isinstance(frames_in, list):
        raise _err(name, "frames", "must be a list")
    scene.num_frames_total = len(frames_in)
    fps = frame_meta.get("fps", FPS_LOOKUP.get(scene.dataset.lower()))
    scene.fps = float(fps) if fps is not None else None
    parsed = []
    seen = set()
    for i, fr in enumerate(frames_in):
        where = f"frames[{i}]"
        if not isinstance(fr, dict) or "frame_id" not in fr:
            raise _err(name, f"{where}.frame_id", "missing")
        try:
            fid = int(fr["frame_id"])
        except (TypeError, ValueError) as e:
            raise _err(name, f"{where}.frame_id", f"not an integer: {fr['frame_id']!r}") from e
        if fid in seen:
            raise _err(name, f"{where}.frame_id", f"duplicate frame_id {fid}")
        seen.add(fid)
        pose_l = fr.get("camera_pose_camera_to_world")
        if not pose_l:  # official generators skip frames without a pose
            continue
        pose = _vec(name, f"{where}.camera_pose_camera_to_world", pose_l, 16, finite=False).reshape(4, 4)
        if not np.all(np.isfinite(pose)):
            # ScanNet writes -inf poses for frames it lost track of. The official generators keep
            # such a frame (its boxes, its rank) and skip only the questions that need its camera.
            pose = None
        else:
            R = pose[:3, :3]
            if not np.allclose(R @ R.T, np.eye(3), atol=1e-3) or np.linalg.det(R) < 0:
                raise _err(name, f"{where}.camera_pose_camera_to_world",
                           "rotation block is not a proper rotation (R R^T = I, det +1)")
            if not np.allclose(pose[3], [0, 0, 0, 1], atol=1e-6):
                raise _err(name, f"{where}.camera_pose_camera_to_world",
                           f"last row must be [0, 0, 0, 1], got {pose[3].tolist()}")
        vis = []
        for j, bb in enumerate(fr.get("bboxes_2d", []) or []):
            if not isinstance(bb, dict) or "instance_id" not in bb:
                raise _err(name, f"{where}.bboxes_2d[{j}].instance_id", "missing")
            box2d = bb.get("bbox_2d")
            if box2d is None or len(box2d) != 4:
                raise _err(name, f"{where}.bboxes_2d[{j}].bbox_2d", "expected [xmin, ymin, xmax, ymax]")
            iid = int(bb["instance_id"])
            if iid in inst2cat and iid not in vis:  # unknown ids (unlabelled classes) are ignored, as officially
                vis.append(iid)
        parsed.append((fid, pose, vis))
    parsed.sort(key=lambda x: x[0])
    scene.frames = [Frame(fid, i, pose, vis) for i, (fid, pose, vis) in enumerate(parsed)]
    return scene
