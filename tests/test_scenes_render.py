"""Renderer geometry: projections land where the depth says, visibility on a scripted pan."""

import numpy as np
import pytest

from data_pipeline import engine
from data_pipeline.engine.geometry import world_to_camera
from data_pipeline.scenes import Intrinsics, Renderer, Room, SceneObject, bboxes_2d, make_pose
from data_pipeline.scenes.writer import SceneSpec, frame_metadata, scene_metadata


def _obj(cat, iid, center, yaw, size):
    return SceneObject(cat, iid, np.array(center, float), yaw, np.array(size, float), np.array([0.7, 0.3, 0.2]), 0)


@pytest.mark.parametrize("yaw_obj, cam_xy, pitch", [(0.0, (0.6, 0.7), -25), (0.5, (0.8, 4.0), -30), (-1.1, (4.5, 0.8), -20)])
def test_box_corner_projects_to_rendered_pixel_with_matching_depth(yaw_obj, cam_xy, pitch):
    size = (0.9, 0.6, 1.1)
    obj = _obj("cabinet", 0, (2.6, 2.4, size[2] / 2), yaw_obj, size)
    room = Room(5.0, 5.0, 2.8, [obj])
    intr = Intrinsics.from_fov(160, 128, 70.0)
    cam = np.array([*cam_xy, 1.6])
    yaw = np.arctan2(obj.center[1] - cam[1], obj.center[0] - cam[0]) + 0.1
    pose = make_pose(cam, yaw, np.radians(pitch))
    rgb, depth, inst = Renderer(room, intr).render(pose)
    corners = obj.corners()
    top = corners[corners[:, 2] > size[2] / 2]
    near = top[np.argmin(np.linalg.norm(top - cam, axis=1))]  # nearest top corner: visible
    x, y, z = world_to_camera(near, pose)[0]
    u, v = intr.fx * x / z + intr.cx, intr.fy * y / z + intr.cy
    assert 1 <= u <= intr.width - 2 and 1 <= v <= intr.height - 2
    j, i = int(round(u)), int(round(v))
    win_i, win_d = inst[i - 1:i + 2, j - 1:j + 2], depth[i - 1:i + 2, j - 1:j + 2]
    ok = (win_i == 1) & (np.abs(win_d - z) <= 0.01 * z)
    assert ok.any(), (win_i, win_d, z)
    # the interior of the box face below the corner is the box too, with depth close to the corner's
    assert inst[min(i + 3, intr.height - 1), j] == 1 or inst[i + 3, j + 3 if u < intr.width / 2 else j - 3] == 1


def test_floor_depth_is_analytic():
    room = Room(6.0, 6.0, 3.0, [])
    intr = Intrinsics.from_fov(129, 129, 60.0)  # odd size: an exact centre pixel
    for pitch in (-30, -45, -60):  # the optical axis hits the floor, not a wall
        pose = make_pose([3.0, 3.0, 1.5], 0.3, np.radians(pitch))
        _, depth, inst = Renderer(room, intr).render(pose)
        c = intr.height // 2
        assert depth[c, c] == pytest.approx(1.5 / np.sin(np.radians(-pitch)), rel=1e-4)
        assert inst.max() == 0


def test_visibility_and_appearance_order_on_scripted_pan():
    cats = ["tv", "cabinet", "refrigerator", "washer"]  # single-part shapes: the box is solid
    ang = np.radians([0, 90, 180, 270])
    objs = [_obj(c, k, (3 + 2 * np.cos(a), 3 + 2 * np.sin(a), 0.5), a, (0.5, 0.5, 1.0)) for k, (c, a) in
            enumerate(zip(cats, ang))]
    room = Room(6.0, 6.0, 2.8, objs)
    intr = Intrinsics.from_fov(96, 96, 60.0)
    n = 13
    poses = np.stack([make_pose([3, 3, 1.2], np.radians(25 * k), np.radians(-15)) for k in range(n)])
    r = Renderer(room, intr)
    inst = np.stack([r.render(p)[2] for p in poses])
    # expected visibility from geometry alone: any point of the box in front of the camera and inside the image
    for k, p in enumerate(poses):
        for o in objs:
            g = np.linspace(-0.5, 0.5, 6)
            grid = np.stack(np.meshgrid(g, g, g), -1).reshape(-1, 3) * o.size  # points of the solid box
            cam = world_to_camera(o.center + grid @ o.axes, p)
            front = cam[:, 2] > 0.05
            u = intr.fx * cam[front, 0] / cam[front, 2] + intr.cx
            v = intr.fy * cam[front, 1] / cam[front, 2] + intr.cy
            inside = (u > 1) & (u < intr.width - 2) & (v > 1) & (v < intr.height - 2)
            near = (u > -4) & (u < intr.width + 3) & (v > -4) & (v < intr.height + 3)
            rendered = (inst[k] == o.instance_id + 1).sum()
            # a solid-box point seen inside the image means its pixel's ray hits the box (no occluders here)
            if inside.sum() >= 3:
                assert rendered > 0, (k, o.category)
            if not near.any():
                assert rendered == 0, (k, o.category)
    spec = SceneSpec(0, 0, num_frames=n, fps=1.0, width=96, height=96, min_visible_frac=0.0)
    fm = frame_metadata(spec, intr, poses, inst)
    sm = scene_metadata(room, "synthetic/pan.mp4", "synthetic")
    first = {}
    for f in fm["frames"]:
        for b in f["bboxes_2d"]:
            first.setdefault(cats[b["instance_id"]], f["frame_id"])
    assert list(sorted(first, key=first.get)) == cats  # counter-clockwise pan: 0, 90, 180, 270 deg
    items = engine.generate_qa(sm, fm, tasks=["obj_appearance_order"])
    assert [i["ground_truth"] for i in items] == [", ".join(cats)]


def test_bboxes_2d_match_mask():
    inst = np.zeros((20, 30), np.uint16)
    inst[2:5, 3:9] = 4
    inst[10, 10] = 2  # one pixel: below a 2-pixel visibility floor
    out = bboxes_2d(inst, 2)
    assert out == [{"instance_id": 3, "bbox_2d": [3, 2, 8, 4], "num_pixels": 18}]


@pytest.mark.parametrize("q_angle, expected", [(35, "left"), (-35, "right")])
def test_engine_left_is_image_left(q_angle, expected):
    """Handedness check between the renderer and the engine: standing by A facing B, the object
    the engine calls 'left' is rendered in the left half of A's view of B."""
    from data_pipeline.engine.geometry import Box
    from data_pipeline.engine.vsi import relative_direction_answer

    a = np.radians(q_angle)
    pos, ori = np.array([1.0, 1.0]), np.array([4.5, 3.0])
    heading = np.arctan2(*(ori - pos)[::-1])
    q = pos + 2.5 * np.array([np.cos(heading + a), np.sin(heading + a)])
    objs = [_obj("cabinet", 0, (*ori, 0.5), 0.0, (0.4, 0.4, 1.0)), _obj("washer", 1, (*q, 0.5), 0.0, (0.4, 0.4, 1.0))]
    room = Room(6.0, 6.0, 2.8, objs)
    intr = Intrinsics.from_fov(96, 96, 90.0)
    _, _, inst = Renderer(room, intr).render(make_pose([*pos, 1.0], heading, np.radians(-10)))
    cols = np.nonzero(inst == 2)[1]
    assert cols.size > 0
    side = "left" if cols.mean() < intr.cx else "right"

    def bx(o):
        return Box(o.center, o.axes, o.size)

    stand = Box(np.array([*pos, 0.5]), np.eye(3), np.array([0.3, 0.3, 1.0]))
    assert relative_direction_answer(stand, bx(objs[0]), bx(objs[1]), 3) == expected == side
