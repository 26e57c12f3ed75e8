"""Procedural indoor rooms: a rectangular room with non-overlapping furniture.

World frame (as in ScanNet): right-handed, metres, +z up, floor at z = 0, the room spans
``[0, width] x [0, depth] x [0, height]``. Every object is a box rotated about +z (yaw);
one seed drives everything, so ``generate_room(np.random.default_rng(s))`` is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from data_pipeline.scenes.catalogue import CATALOGUE, CATEGORY_BY_NAME, Category, parts_for


@dataclass
class SceneObject:
    category: str
    instance_id: int
    center: np.ndarray  # [3] box centre (world)
    yaw: float  # rotation about +z (rad); local +x -> (cos, sin, 0)
    size: np.ndarray  # [3] (w, d, h) along local x, y, z
    colour: np.ndarray  # [3] float in [0, 1]
    texture: int

    @property
    def axes(self) -> np.ndarray:
        """[3, 3] rows = unit box axes in world (local x, y, z)."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])

    def corners(self) -> np.ndarray:
        """[8, 3] world corners."""
        signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
        return self.center + (signs * self.size / 2) @ self.axes

    def footprint(self) -> np.ndarray:
        """[4, 2] world xy corners of the footprint (counter-clockwise)."""
        a = self.axes[:2, :2]
        hw, hd = self.size[0] / 2, self.size[1] / 2
        loc = np.array([[-hw, -hd], [hw, -hd], [hw, hd], [-hw, hd]])
        return self.center[:2] + loc @ a

    def world_parts(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Parts as (world centre [3], size [3]) sharing the object's yaw."""
        w, d, h = self.size
        bottom = self.center[2] - h / 2
        out = []
        for c_loc, s in parts_for(CATEGORY_BY_NAME[self.category].shape, float(w), float(d), float(h)):
            xy = c_loc[:2] @ self.axes[:2, :2]
            out.append((np.array([self.center[0] + xy[0], self.center[1] + xy[1], bottom + c_loc[2]]), s.astype(float)))
        return out

    def to_meta(self) -> dict:
        """The official bbox record (``normalizedAxes`` flat, rows = axes, as open3d's ``R.T``)."""
        cs = self.corners()
        return {
            "centroid": [float(v) for v in self.center],
            "axesLengths": [float(v) for v in self.size],
            "normalizedAxes": [float(v) for v in self.axes.reshape(-1)],
            "min": [float(v) for v in cs.min(0)],
            "max": [float(v) for v in cs.max(0)],
            "instance_id": int(self.instance_id),
        }


@dataclass
class Room:
    width: float
    depth: float
    height: float
    objects: list[SceneObject] = field(default_factory=list)
    floor_colour: np.ndarray = field(default_factory=lambda: np.array([0.6, 0.5, 0.4]))
    wall_colour: np.ndarray = field(default_factory=lambda: np.array([0.85, 0.85, 0.8]))
    floor_texture: int = 2
    # L-shaped rooms: one corner rectangle [x0, y0, x1, y1] is solid wall (None: rectangle)
    cutout: np.ndarray | None = None

    @property
    def area(self) -> float:
        """Floor area in m^2 (the rectangle minus the L cut-out)."""
        cut = 0.0 if self.cutout is None else float((self.cutout[2] - self.cutout[0]) * (self.cutout[3] - self.cutout[1]))
        return self.width * self.depth - cut

    def cutout_footprint(self) -> np.ndarray | None:
        """[4, 2] counter-clockwise corners of the cut-out, or None."""
        if self.cutout is None:
            return None
        x0, y0, x1, y1 = self.cutout
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)

    def outline(self) -> np.ndarray:
        """[K, 2] floor polygon (for maps)."""
        W, D = self.width, self.depth
        if self.cutout is None:
            return np.array([[0, 0], [W, 0], [W, D], [0, D]], float)
        x0, y0, x1, y1 = self.cutout
        cx = x1 if x0 == 0 else x0  # the cut-out's inner corner
        cy = y1 if y0 == 0 else y0
        pts = {(0, 0): [[cx, 0], [W, 0], [W, D], [0, D], [0, cy], [cx, cy]],
               (1, 0): [[0, 0], [cx, 0], [cx, cy], [W, cy], [W, D], [0, D]],
               (1, 1): [[0, 0], [W, 0], [W, cy], [cx, cy], [cx, D], [0, D]],
               (0, 1): [[0, 0], [W, 0], [W, D], [cx, D], [cx, cy], [0, cy]]}
        return np.array(pts[(int(x0 > 0), int(y0 > 0))], float)

    @property
    def center(self) -> list[float]:
        return [self.width / 2, self.depth / 2, self.height / 2]


def _overlap_2d(a: np.ndarray, b: np.ndarray, gap: float) -> bool:
    """Separating-axis test between two convex quads [4, 2], inflated by ``gap``."""
    for poly in (a, b):
        for i in range(4):
            e = poly[(i + 1) % 4] - poly[i]
            n = np.array([-e[1], e[0]]) / (np.linalg.norm(e) + 1e-12)
            pa, pb = a @ n, b @ n
            if pa.max() + gap < pb.min() or pb.max() + gap < pa.min():
                return False
    return True


def _place(rng: np.random.Generator, cat: Category, room: Room, size: np.ndarray, clearance: float):
    """Candidate (centre, yaw) for one object; None when the room has no room left."""
    w, d, h = size
    W, D = room.width, room.depth
    if cat.placement in ("wall", "wall_mounted"):
        wall = rng.integers(4)
        # yaw so that local +y (the back) points into the wall
        if wall == 0:  # y = 0 wall, back towards -y
            yaw, along = np.pi, (w / 2 + 0.05, W - w / 2 - 0.05)
        elif wall == 1:  # y = D
            yaw, along = 0.0, (w / 2 + 0.05, W - w / 2 - 0.05)
        elif wall == 2:  # x = 0
            yaw, along = np.pi / 2, (w / 2 + 0.05, D - w / 2 - 0.05)
        else:  # x = W
            yaw, along = -np.pi / 2, (w / 2 + 0.05, D - w / 2 - 0.05)
        if along[0] >= along[1]:
            return None
        t = rng.uniform(*along)
        off = d / 2 + 0.01
        xy = {0: (t, off), 1: (t, D - off), 2: (off, t), 3: (W - off, t)}[int(wall)]
    else:
        r = 0.5 * np.hypot(w, d) + clearance
        if 2 * r >= min(W, D):
            return None
        tables = [o for o in room.objects if o.category in ("table", "desk")]
        if cat.name in ("chair", "stool") and tables and rng.random() < 0.7:
            # seat at a table side, facing it (chairs' backs are local +y)
            t = tables[int(rng.integers(len(tables)))]
            side = int(rng.integers(4))
            ax = t.axes[:2, :2]
            dirv = ax[side % 2] * (1 if side < 2 else -1)
            along = ax[1 - side % 2] * rng.uniform(-0.3, 0.3) * t.size[1 - side % 2]
            xy = t.center[:2] + dirv * (t.size[side % 2] / 2 + d / 2 + 0.12) + along
            yaw = float(np.arctan2(dirv[1], dirv[0]) - np.pi / 2) + float(rng.normal(0, 0.15))
            if not (r < xy[0] < W - r and r < xy[1] < D - r):
                return None
        else:
            yaw = float(rng.choice([0.0, np.pi / 2, np.pi, -np.pi / 2])) + float(rng.normal(0, 0.25))
            if rng.random() < 0.6:
                # keep the middle of the room walkable: most loose objects stand near a wall
                band = rng.uniform(r, min(r + 0.8, min(W, D) / 2))
                wall = int(rng.integers(4))
                xy = {0: (rng.uniform(r, W - r), band), 1: (rng.uniform(r, W - r), D - band),
                      2: (band, rng.uniform(r, D - r)), 3: (W - band, rng.uniform(r, D - r))}[wall]
            else:
                xy = (rng.uniform(r, W - r), rng.uniform(r, D - r))
    z0 = rng.uniform(*cat.z0) if cat.placement == "wall_mounted" else 0.0
    return np.array([xy[0], xy[1], z0 + h / 2]), float(yaw)


def generate_room(
    rng: np.random.Generator,
    *,
    width: tuple[float, float] = (3.5, 8.0),
    depth: tuple[float, float] = (3.5, 7.0),
    height: tuple[float, float] = (2.6, 3.0),
    n_categories: tuple[int, int] = (7, 11),
    duplicate_prob: float = 0.35,
    clearance: float = 0.25,
    l_shape_prob: float = 0.3,
) -> Room:
    """A room with ``n_categories`` distinct categories, some duplicated (2..max_count);
    with probability ``l_shape_prob`` one corner (25-45 % of each side) is cut out (L shape).

    Objects never overlap (footprints, inflated by ``clearance``); objects that do not fit
    after 60 tries are dropped, so ``object_counts`` always matches what was placed.
    """
    room = Room(float(rng.uniform(*width)), float(rng.uniform(*depth)), float(rng.uniform(*height)))
    room.floor_colour = rng.uniform([0.35, 0.25, 0.15], [0.75, 0.6, 0.45])
    room.wall_colour = rng.uniform([0.7, 0.7, 0.65], [0.95, 0.95, 0.92])
    room.floor_texture = int(rng.choice([1, 2]))
    if rng.random() < l_shape_prob:
        cw, cd = room.width * rng.uniform(0.25, 0.45), room.depth * rng.uniform(0.25, 0.45)
        corner = int(rng.integers(4))
        x0 = 0.0 if corner in (0, 3) else room.width - cw
        y0 = 0.0 if corner in (0, 1) else room.depth - cd
        room.cutout = np.array([x0, y0, x0 + cw, y0 + cd])
    k = int(rng.integers(n_categories[0], n_categories[1] + 1))
    cats = [CATALOGUE[i] for i in rng.choice(len(CATALOGUE), size=min(k, len(CATALOGUE)), replace=False)]
    # big, wall-bound furniture first: it is the hardest to fit
    cats.sort(key=lambda c: -(c.w[1] * c.d[1]))
    placed_fp: list[np.ndarray] = [] if room.cutout is None else [room.cutout_footprint()]
    next_id = 0
    for cat in cats:
        n = 1
        if cat.max_count > 1 and rng.random() < duplicate_prob:
            n = int(rng.integers(2, cat.max_count + 1))
        base_size = np.array([rng.uniform(*cat.w), rng.uniform(*cat.d), rng.uniform(*cat.h)])
        base_colour = np.array(cat.colours[int(rng.integers(len(cat.colours)))], float) / 255.0
        for _ in range(n):
            # duplicates look alike (same model) with small size/colour jitter, as in real rooms
            size = base_size * rng.uniform(0.97, 1.03, 3)
            for _try in range(60):
                cand = _place(rng, cat, room, size, clearance)
                if cand is None:
                    break
                center, yaw = cand
                obj = SceneObject(cat.name, next_id, center, yaw, size,
                                  np.clip(base_colour + rng.normal(0, 0.03, 3), 0, 1), cat.texture)
                fp = obj.footprint()
                # footprints never overlap, mounted ones included: keeps every box disjoint
                clash = any(_overlap_2d(fp, other, clearance) for other in placed_fp)
                if not clash:
                    room.objects.append(obj)
                    placed_fp.append(fp)
                    next_id += 1
                    break
    return room

