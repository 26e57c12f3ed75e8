"""Temporal tasks on scripted trajectories; the camera-position decision (t, not -R^T t)."""

import numpy as np
import pytest
from _engine_helpers import frames, scene

from data_pipeline import engine
from data_pipeline.engine.geometry import camera_center
from data_pipeline.engine.vsti import movement_direction, relative_position_answer
from data_pipeline.scenes.camera import make_pose

OBJS = [("tv", [3.0, 1.0, 1.0], [0.4, 0.4, 0.4]), ("lamp", [3.0, -1.0, 1.0], [0.4, 0.4, 0.4]),
        ("sofa", [6.0, 0.0, 0.4], [0.6, 0.6, 0.6]), ("plant", [3.0, 0.0, 2.2], [0.4, 0.4, 0.4])]


def _scripted(n=12):
    """Camera walks +y at 0.5 m / frame while turning its head (yaw 0 -> 90 deg)."""
    pos = np.stack([np.zeros(n), 0.5 * np.arange(n), np.full(n, 1.5)], 1)
    yaw = np.radians(np.linspace(0, 90, n))
    return pos, [make_pose(p, y, 0.0) for p, y in zip(pos, yaw)]


def test_camera_centre_is_translation_of_c2w():
    pos, poses = _scripted()
    for p, T in zip(pos, poses):
        assert np.allclose(camera_center(T), p)
        # the c2w matrix maps the camera origin to the centre; -R^T t is a different point
        assert np.allclose(T @ [0, 0, 0, 1], [*p, 1])
        wrong = -T[:3, :3].T @ T[:3, 3]
        assert not np.allclose(wrong, p) or np.allclose(p, 0)


def test_displacement_uses_known_trajectory():
    pos, poses = _scripted()
    sm = scene(OBJS)
    fm = frames(poses, [[0, 1, 2]] * len(poses))
    items = engine.generate_qa(sm, fm, seed=0, tasks=["camera_displacement"], num_per_task=50)
    assert items
    official_style_disagrees = 0
    for it in items:
        i, j = it["frame_indices"]
        assert it["ground_truth"] == round(float(np.linalg.norm(pos[j] - pos[i])), 1)
        assert 5 <= j - i <= 30
        assert f"between frame {i + 1} and frame {j + 1} of {len(poses)}" in it["question"]
        w = [-poses[k][:3, :3].T @ poses[k][:3, 3] for k in (i, j)]
        official_style_disagrees += round(float(np.linalg.norm(w[1] - w[0])), 1) != it["ground_truth"]
    assert official_style_disagrees > 0  # -R^T t would have given other answers on this trajectory


@pytest.mark.parametrize("yaw_deg, move, expected", [
    (90, [0, 2, 0], "Forward"), (90, [0, -2, 0], "Backward"), (90, [2, 0, 0], "Right"), (90, [-2, 0, 0], "Left"),
    (0, [2, 0.5, 0], "Forward"), (0, [0.3, 2, 0], "Left"), (0, [0.5, 0.5, 3.0], None), (0, [1.5, 1.4, 0], None),
])
def test_movement_direction_classes(yaw_deg, move, expected):
    p0 = np.array([1.0, 1.0, 1.5])
    a = make_pose(p0, np.radians(yaw_deg), np.radians(-10))
    b = make_pose(p0 + np.array(move), np.radians(yaw_deg + 40), 0.0)  # end orientation must not matter
    assert movement_direction(a, b, 1.0, 1.25) == expected


def test_relative_position_in_camera_axes():
    from data_pipeline.engine.geometry import Box

    def bx(c):
        return Box(np.array(c, float), np.eye(3), np.array([0.4, 0.4, 0.4]))

    T = make_pose([0, 0, 1.0], 0.0, 0.0)  # looking along +x; camera right = -y, camera down = -z
    assert relative_position_answer(bx([3, 1, 1]), bx([3, -1, 1]), T, "lr") == "Left"
    assert relative_position_answer(bx([3, -1, 1]), bx([3, 1, 1]), T, "lr") == "Right"
    assert relative_position_answer(bx([2, 0, 1]), bx([5, 0, 1]), T, "nf") == "Near"
    assert relative_position_answer(bx([3, 0, 2.2]), bx([3, 0, 1]), T, "ud") == "Up"
    assert relative_position_answer(bx([3, 0, 1.2]), bx([3, 0, 1]), T, "ud") is None  # overlapping extents


def test_camera_object_distance_and_frame_unique_rule():
    pos, poses = _scripted(8)
    sm = scene(OBJS + [("chair", [5, 5, 0.4], [0.5, 0.5, 0.8]), ("chair", [5, 6, 0.4], [0.5, 0.5, 0.8])])
    vis = [[0, 1, 4, 5]] * 8  # both chairs visible -> chair is ambiguous in every frame
    items = engine.generate_qa(sm, frames(poses, vis), tasks=["camera_obj_abs_dist"], num_per_task=100)
    assert items and all("chair" not in i["question"] for i in items)
    ctr = {"tv": np.array([3.0, 1.0, 1.0]), "lamp": np.array([3.0, -1.0, 1.0])}
    for it in items:
        (f,) = it["frame_indices"]
        cat = "tv" if "the tv in" in it["question"] else "lamp"
        d = np.linalg.norm(np.maximum(np.abs(pos[f] - ctr[cat]) - 0.2, 0))
        assert it["ground_truth"] == round(float(d), 1)
        assert f"in frame {f + 1} of 8?" in it["question"]


def test_appearance_order_from_frames():
    pos, poses = _scripted(10)
    sm = scene(OBJS)
    vis = [[0], [0], [0, 1], [], [1], [2], [2], [0], [3], [3]]  # first seen: tv 0 s, lamp 2 s, sofa 5 s, plant 8 s
    items = engine.generate_qa(sm, frames(poses, vis, fps=1.0), tasks=["obj_appearance_order"])
    assert len(items) == 1
    assert items[0]["ground_truth"] == "tv, lamp, sofa, plant"
    # at 2 fps the tv (0 s) and lamp (round(2/2) = 1 s) are only 1 s apart -> filtered
    assert engine.generate_qa(sm, frames(poses, vis, fps=2.0), tasks=["obj_appearance_order"]) == []


def test_lost_camera_frames_are_kept_but_not_asked_about():
    """ScanNet writes -inf poses where tracking failed: the frame still counts (boxes, rank "frame k
    of N"), and only the questions that need its camera skip it, as the official generators do."""
    pos, poses = _scripted()
    fm = frames(poses, [[0, 1, 2]] * len(poses))
    lost = 4
    fm["frames"][lost]["camera_pose_camera_to_world"] = [[float("-inf")] * 4 for _ in range(4)]
    camera_tasks = ["camera_displacement", "camera_movement_direction_v1", "camera_obj_abs_dist",
                    "camera_obj_rel_dist_v1", "obj_obj_relative_pos_nf"]
    items = engine.generate_qa(scene(OBJS), fm, seed=0, tasks=camera_tasks, num_per_task=200)
    assert {it["question_type"] for it in items} >= {"camera_displacement", "camera_obj_abs_dist"}
    assert all(lost not in it["frame_indices"] for it in items)
    assert any(f"of {len(poses)}" in it["question"] for it in items if it["question_type"] == "camera_displacement")


def test_zero_questions_per_task():
    pos, poses = _scripted()
    assert engine.generate_qa(scene(OBJS), frames(poses, [[0, 1, 2]] * len(poses)), seed=0, num_per_task=0) == []
