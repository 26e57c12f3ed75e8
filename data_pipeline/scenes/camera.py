"""Hand-held camera trajectories: a person walking through the room, pausing to look around.

Poses are camera-to-world ``[4, 4]`` with OpenCV camera axes (+x right, +y down, +z forward)
in the z-up world of :mod:`data_pipeline.scenes.room`. The camera centre is the translation
column ``pose[:3, 3]``.
"""

from __future__ import annotations

import numpy as np

from data_pipeline.scenes.room import Room


def look_rotation(yaw: float, pitch: float) -> np.ndarray:
    """Camera-to-world rotation ``[3, 3]`` (columns = camera x, y, z in world) for a camera
    whose optical axis has heading ``yaw`` (rad, from +x towards +y) and elevation ``pitch``
    (rad, > 0 looks up). No roll: camera x stays horizontal."""
    cp, sp, cy, sy = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    fwd = np.array([cp * cy, cp * sy, sp])
    right = np.array([sy, -cy, 0.0])
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd], axis=1)


def make_pose(position, yaw: float, pitch: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = look_rotation(yaw, pitch)
    T[:3, 3] = position
    return T


def free_space(room: Room, res: float = 0.1, wall_margin: float = 0.5, obj_margin: float = 0.2):
    """Boolean occupancy grid (True = a person may stand there) and its cell centres."""
    xs = np.arange(res / 2, room.width, res)
    ys = np.arange(res / 2, room.depth, res)
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    free = (gx > wall_margin) & (gx < room.width - wall_margin) & (gy > wall_margin) & (gy < room.depth - wall_margin)
    if room.cutout is not None:
        x0, y0, x1, y1 = room.cutout
        free &= ~((gx > x0 - wall_margin) & (gx < x1 + wall_margin) & (gy > y0 - wall_margin) & (gy < y1 + wall_margin))
    for obj in room.objects:
        a = obj.axes[:2, :2]
        rel = np.stack([gx - obj.center[0], gy - obj.center[1]], -1) @ a.T  # local xy
        inside = (np.abs(rel[..., 0]) < obj.size[0] / 2 + obj_margin) & (np.abs(rel[..., 1]) < obj.size[1] / 2 + obj_margin)
        free &= ~inside
    return free, xs, ys


def _segment_free(free, xs, ys, a, b, res):
    n = max(int(np.linalg.norm(b - a) / (res / 2)), 2)
    pts = a + (b - a) * np.linspace(0, 1, n)[:, None]
    ix = np.clip(np.round((pts[:, 0] - xs[0]) / res).astype(int), 0, len(xs) - 1)
    iy = np.clip(np.round((pts[:, 1] - ys[0]) / res).astype(int), 0, len(ys) - 1)
    return bool(free[ix, iy].all())


def _smoothstep(x):
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def walkthrough(room: Room, rng: np.random.Generator, n_frames: int, fps: float,
                eye_height: tuple[float, float] = (1.35, 1.7), max_speed: float = 0.8) -> np.ndarray:
    """``[n_frames, 4, 4]`` camera-to-world poses of a person filming the room.

    The walker visits 3-5 collision-free waypoints (straight legs through free space), eases
    in and out of every leg, stops 1-2 times to pan around, and looks around while walking
    (smooth yaw offsets, gentle downward pitch). Everything is smoothed over time so the
    video looks hand-held rather than robotic.
    """
    res = 0.1
    free, xs, ys = free_space(room, res)
    cells = np.argwhere(free)
    duration = (n_frames - 1) / fps
    if len(cells) == 0:  # crowded room: stand in the middle and pan
        pts = np.array([[room.width / 2, room.depth / 2]])
    else:
        start = cells[rng.integers(len(cells))]
        pts = [np.array([xs[start[0]], ys[start[1]]])]
        for _ in range(int(rng.integers(3, 6))):
            for _try in range(40):
                c = cells[rng.integers(len(cells))]
                q = np.array([xs[c[0]], ys[c[1]]])
                dist = np.linalg.norm(q - pts[-1])
                if (0.8 if _try > 20 else 1.2) < dist < 4.5 and _segment_free(free, xs, ys, pts[-1], q, res):
                    pts.append(q)
                    break
        pts = np.array(pts)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1) if len(pts) > 1 else np.zeros(0)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    # stops: at the start, or at some waypoints
    n_stops = int(rng.integers(1, 3))
    stop_at = sorted(set(rng.choice(len(pts), size=min(n_stops, len(pts)), replace=False).tolist()))
    stop_dur = {k: float(rng.uniform(0.08, 0.18)) * duration for k in stop_at}
    walk_time = max(duration - sum(stop_dur.values()), 1e-3)
    total = cum[-1]
    if total / walk_time > max_speed:  # cut the route short instead of sprinting
        total = max_speed * walk_time
    # knots (t, s): walk legs ease in/out, stops hold s
    knots_t, knots_s = [0.0], [0.0]
    t = 0.0
    for k in range(len(pts)):
        s_k = min(cum[k], total)
        if k > 0:
            leg = s_k - knots_s[-1]
            t += walk_time * (leg / total) if total > 0 else 0.0
            knots_t.append(t)
            knots_s.append(s_k)
        if k in stop_dur:
            t += stop_dur[k]
            knots_t.append(t)
            knots_s.append(s_k)
    knots_t = np.array(knots_t) * (duration / max(knots_t[-1], 1e-6))
    knots_s = np.array(knots_s)
    times = np.arange(n_frames) / fps
    s = np.empty(n_frames)
    for i, tt in enumerate(times):
        j = int(np.clip(np.searchsorted(knots_t, tt, side="right") - 1, 0, len(knots_t) - 2)) if len(knots_t) > 1 else 0
        if len(knots_t) == 1:
            s[i] = 0.0
            continue
        t0, t1 = knots_t[j], knots_t[j + 1]
        a = _smoothstep((tt - t0) / max(t1 - t0, 1e-6))
        s[i] = knots_s[j] + a * (knots_s[j + 1] - knots_s[j])
    stopped = np.zeros(n_frames, bool)
    for j in range(len(knots_t) - 1):
        if knots_s[j + 1] == knots_s[j]:
            stopped |= (times >= knots_t[j]) & (times <= knots_t[j + 1])
    # position along the polyline
    if len(pts) > 1:
        k = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
        frac = (s - cum[k]) / np.maximum(seg[k], 1e-9)
        xy = pts[k] + (pts[k + 1] - pts[k]) * frac[:, None]
        heading = np.arctan2(pts[k + 1, 1] - pts[k, 1], pts[k + 1, 0] - pts[k, 0])
    else:
        xy = np.repeat(pts, n_frames, axis=0)
        heading = np.full(n_frames, rng.uniform(-np.pi, np.pi))
    heading = np.unwrap(heading)
    eye = rng.uniform(*eye_height)
    z = eye + 0.015 * np.sin(2 * np.pi * times * 1.7) * (~stopped)
    # gaze: the filmer looks at a sequence of objects (this is what makes objects appear one
    # after another), blended with the walking direction; wide pans while standing still
    if room.objects:
        n_t = int(rng.integers(4, 8))
        order = rng.permutation(len(room.objects))
        targets = np.array([room.objects[int(order[i % len(order)])].center for i in range(n_t)])
    else:
        targets = np.array([[room.width / 2, room.depth / 2, 1.0]])
        n_t = 1
    edges = np.sort(rng.uniform(0, duration, n_t - 1)) if n_t > 1 else np.zeros(0)
    seg = np.searchsorted(edges, times, side="right")
    seg_start = np.concatenate([[0.0], edges])[seg]
    a = _smoothstep((times - seg_start) / max(1.0, 0.08 * duration))  # turn towards the next target

    def gaze(idx):
        tgt = targets[idx]
        return np.arctan2(tgt[:, 1] - xy[:, 1], tgt[:, 0] - xy[:, 0]), tgt[:, 2]

    yaw_new, zt_new = gaze(seg)
    yaw_old, zt_old = gaze(np.maximum(seg - 1, 0))
    dyaw = (yaw_new - yaw_old + np.pi) % (2 * np.pi) - np.pi
    look = yaw_old + a * dyaw
    # mix in the walking heading (people look where they go) while moving
    dh = (heading - look + np.pi) % (2 * np.pi) - np.pi
    look = look + np.where(stopped, 0.0, 0.3 * dh)
    pan = np.where(stopped, np.radians(rng.uniform(20, 45)) * np.sin(2 * np.pi * times / (duration * rng.uniform(0.12, 0.2)) + rng.uniform(0, 6.3)), 0.0)
    yaw = np.unwrap(look + pan)
    dist = np.hypot(targets[seg, 0] - xy[:, 0], targets[seg, 1] - xy[:, 1])
    zt = zt_old + a * (zt_new - zt_old)
    pitch = np.clip(np.arctan2(zt - z, np.maximum(dist, 0.5)), np.radians(-35), np.radians(-3))
    # temporal smoothing (a hand-held camera has inertia)
    kern = np.exp(-0.5 * (np.arange(-3, 4) / 1.2) ** 2)
    kern /= kern.sum()
    yaw = np.convolve(np.pad(yaw, 3, mode="edge"), kern, mode="valid")
    pitch = np.convolve(np.pad(pitch, 3, mode="edge"), kern, mode="valid")
    poses = np.stack([make_pose([xy[i, 0], xy[i, 1], z[i]], yaw[i], pitch[i]) for i in range(n_frames)])
    return poses
