"""Hand-built scenes in the official metadata layout for the engine tests."""

from __future__ import annotations

import numpy as np


def yaw_axes(yaw: float) -> list[float]:
    c, s = np.cos(yaw), np.sin(yaw)
    return [c, s, 0.0, -s, c, 0.0, 0.0, 0.0, 1.0]


def box(center, lengths, iid, yaw=0.0) -> dict:
    center, lengths = np.asarray(center, float), np.asarray(lengths, float)
    ax = np.array(yaw_axes(yaw)).reshape(3, 3)
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    cs = center + (signs * lengths / 2) @ ax
    return {"centroid": center.tolist(), "axesLengths": lengths.tolist(), "normalizedAxes": ax.reshape(-1).tolist(),
            "min": cs.min(0).tolist(), "max": cs.max(0).tolist(), "instance_id": iid}


def scene(objects: list[tuple[str, list, list]], room_size=20.0, name="hand0") -> dict:
    """objects: (category, center, lengths[, yaw]) -> scene metadata (instance ids in order)."""
    counts, boxes = {}, {}
    for i, obj in enumerate(objects):
        cat, c, ln = obj[:3]
        yaw = obj[3] if len(obj) > 3 else 0.0
        counts[cat] = counts.get(cat, 0) + 1
        boxes.setdefault(cat, []).append(box(c, ln, i, yaw))
    return {"video_path": f"hand/{name}.mp4", "dataset": "hand", "room_size": room_size,
            "room_center": [2.0, 2.0, 1.4], "object_counts": counts, "object_bboxes": boxes}


def frames(poses, visible, fps=1.0) -> dict:
    """poses [T, 4, 4]; visible: per frame list of instance ids."""
    return {"camera_intrinsics": {"fx": 100.0, "fy": 100.0, "cx": 63.5, "cy": 63.5}, "img_width": 128,
            "img_height": 128, "fps": fps,
            "frames": [{"frame_id": k, "file_path_color": f"c/{k}.jpg", "file_path_depth": f"d/{k}.npz",
                        "camera_pose_camera_to_world": np.asarray(p).tolist(),
                        "bboxes_2d": [{"instance_id": i, "bbox_2d": [0, 0, 1, 1]} for i in vis]}
                       for k, (p, vis) in enumerate(zip(poses, visible))]}


def aabb_distance(c1, l1, c2, l2) -> float:
    """Independent formula for axis-aligned boxes: per-axis gaps, Euclidean norm."""
    c1, l1, c2, l2 = (np.asarray(v, float) for v in (c1, l1, c2, l2))
    gap = np.maximum(np.abs(c1 - c2) - (l1 + l2) / 2, 0)
    return float(np.linalg.norm(gap))
