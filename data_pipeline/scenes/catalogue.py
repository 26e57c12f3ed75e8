"""Object catalogue for procedural rooms: sizes, colours, placement rule and part layout.

Every object is a yaw-rotated box (its 3D bounding box is what the QA engine sees); for
rendering it is made of a few axis-aligned *parts* in the object's local frame so that a
chair looks like a chair and not like a crate. Local frame: origin at the centre of the
footprint on the floor, +x along the object's width, +y along its depth (the *back* of a
wall object is at +y/2 and faces the wall), +z up. Parts always reach the box extremes,
so the union of parts has exactly the object's box as its bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (centre_xyz, size_xyz) in units of the object's (w, d, h); a builder maps sizes -> parts.
Part = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Category:
    name: str
    w: tuple[float, float]  # width range (m), local x
    d: tuple[float, float]  # depth range (m), local y
    h: tuple[float, float]  # height range (m)
    colours: tuple[tuple[int, int, int], ...]
    placement: str  # "wall" (back against a wall), "free", "wall_mounted" (at height on a wall)
    shape: str  # key into PART_BUILDERS
    max_count: int = 1  # > 1: may be duplicated (counting questions)
    texture: int = 0  # 0 plain, 1 stripes, 2 checker, 3 dots
    z0: tuple[float, float] = (0.0, 0.0)  # bottom height range (wall_mounted only)


CATALOGUE: tuple[Category, ...] = (
    Category("bed", (1.4, 1.9), (1.95, 2.15), (0.5, 0.65), ((200, 200, 220), (150, 170, 210), (210, 180, 160)), "wall", "bed", 1, 1),
    Category("sofa", (1.6, 2.4), (0.8, 1.0), (0.75, 0.9), ((120, 60, 50), (60, 90, 130), (90, 110, 80)), "wall", "sofa", 1, 0),
    Category("table", (0.9, 1.6), (0.7, 1.0), (0.7, 0.78), ((150, 100, 60), (110, 75, 45), (190, 160, 120)), "free", "table", 2, 1),
    Category("chair", (0.42, 0.55), (0.45, 0.55), (0.8, 1.0), ((180, 60, 40), (60, 60, 60), (40, 120, 160)), "free", "chair", 6, 0),
    Category("tv", (0.9, 1.5), (0.06, 0.1), (0.55, 0.85), ((25, 25, 30),), "wall_mounted", "box", 1, 0, (0.9, 1.2)),
    Category("lamp", (0.3, 0.45), (0.3, 0.45), (1.3, 1.7), ((230, 210, 120), (240, 240, 230)), "free", "lamp", 2, 0),
    Category("cabinet", (0.6, 1.2), (0.4, 0.6), (0.8, 1.9), ((140, 120, 100), (230, 230, 225), (80, 70, 60)), "wall", "box", 3, 2),
    Category("plant", (0.35, 0.6), (0.35, 0.6), (0.6, 1.5), ((50, 140, 60), (70, 160, 50)), "free", "plant", 3, 3),
    Category("bookshelf", (0.8, 1.2), (0.3, 0.4), (1.6, 2.1), ((120, 80, 50), (200, 190, 170)), "wall", "shelf", 1, 1),
    Category("desk", (1.0, 1.5), (0.6, 0.75), (0.72, 0.78), ((200, 200, 200), (140, 95, 60)), "wall", "table", 1, 0),
    Category("refrigerator", (0.6, 0.8), (0.6, 0.75), (1.6, 1.9), ((235, 235, 240), (180, 180, 185)), "wall", "box", 1, 0),
    Category("trash can", (0.25, 0.4), (0.25, 0.4), (0.35, 0.65), ((90, 90, 95), (40, 110, 60)), "free", "box", 2, 1),
    Category("stool", (0.32, 0.42), (0.32, 0.42), (0.45, 0.7), ((210, 140, 40), (50, 50, 60)), "free", "stool", 4, 0),
    Category("nightstand", (0.4, 0.55), (0.35, 0.45), (0.45, 0.6), ((160, 110, 70), (240, 240, 240)), "wall", "box", 2, 2),
    Category("door", (0.8, 0.95), (0.05, 0.08), (2.0, 2.1), ((170, 120, 80), (240, 240, 240)), "wall", "box", 1, 1),
    Category("window", (0.9, 1.6), (0.05, 0.08), (1.0, 1.3), ((170, 210, 240),), "wall_mounted", "box", 2, 2, (0.8, 1.0)),
    Category("washer", (0.58, 0.62), (0.55, 0.62), (0.82, 0.88), ((245, 245, 245),), "wall", "box", 1, 3),
    Category("monitor", (0.5, 0.7), (0.15, 0.22), (0.4, 0.5), ((20, 20, 25),), "free", "box", 2, 0),
)

CATEGORY_BY_NAME = {c.name: c for c in CATALOGUE}


def _p(cx, cy, cz, sx, sy, sz) -> Part:
    return np.array([cx, cy, cz], np.float32), np.array([sx, sy, sz], np.float32)


def parts_for(shape: str, w: float, d: float, h: float) -> list[Part]:
    """Parts ``(centre [3], size [3])`` in the object's local frame (see module doc)."""
    if shape == "box":
        return [_p(0, 0, h / 2, w, d, h)]
    if shape == "table":
        t = min(0.05, h * 0.1)
        leg = min(0.06, w * 0.1)
        lx, ly = w / 2 - leg / 2, d / 2 - leg / 2
        out = [_p(0, 0, h - t / 2, w, d, t)]
        out += [_p(sx * lx, sy * ly, (h - t) / 2, leg, leg, h - t) for sx in (-1, 1) for sy in (-1, 1)]
        return out
    if shape == "chair":
        seat_h = h * 0.5
        t = 0.05
        leg = 0.045
        lx, ly = w / 2 - leg / 2, d / 2 - leg / 2
        out = [_p(0, 0, seat_h - t / 2, w, d, t), _p(0, d / 2 - t / 2, (seat_h + h) / 2, w, t, h - seat_h)]
        out += [_p(sx * lx, sy * ly, (seat_h - t) / 2, leg, leg, seat_h - t) for sx in (-1, 1) for sy in (-1, 1)]
        return out
    if shape == "sofa":
        base_h = h * 0.5
        arm = 0.18
        back = 0.22
        return [
            _p(0, 0, base_h / 2, w, d, base_h),
            _p(0, d / 2 - back / 2, (base_h + h) / 2, w, back, h - base_h),
            _p(-(w / 2 - arm / 2), -back / 2, base_h + (h * 0.75 - base_h) / 2, arm, d - back, h * 0.75 - base_h),
            _p(w / 2 - arm / 2, -back / 2, base_h + (h * 0.75 - base_h) / 2, arm, d - back, h * 0.75 - base_h),
        ]
    if shape == "bed":
        mat_h = h * 0.55
        head = 0.08
        return [_p(0, -head / 2, mat_h / 2, w, d - head, mat_h), _p(0, d / 2 - head / 2, h / 2, w, head, h)]
    if shape == "lamp":
        pole = 0.04
        shade_h = 0.3
        return [
            _p(0, 0, 0.02, w * 0.6, d * 0.6, 0.04),
            _p(0, 0, (h - shade_h) / 2, pole, pole, h - shade_h),
            _p(0, 0, h - shade_h / 2, w, d, shade_h),
        ]
    if shape == "plant":
        pot_h = min(0.35, h * 0.35)
        return [_p(0, 0, pot_h / 2, w * 0.6, d * 0.6, pot_h), _p(0, 0, (pot_h + h) / 2, w, d, h - pot_h)]
    if shape == "stool":
        t = 0.05
        return [_p(0, 0, h - t / 2, w, d, t), _p(0, 0, (h - t) / 2, w * 0.25, d * 0.25, h - t)]
    if shape == "shelf":
        side = 0.03
        out = [
            _p(-(w / 2 - side / 2), 0, h / 2, side, d, h),
            _p(w / 2 - side / 2, 0, h / 2, side, d, h),
            _p(0, d / 2 - side / 2, h / 2, w - 2 * side, side, h),
        ]
        for k in range(4):
            z = (k + 0.5) * h / 4
            out.append(_p(0, 0, z, w - 2 * side, d - side, 0.03))
        out.append(_p(0, 0, h - 0.015, w - 2 * side, d - side, 0.03))
        return out
    raise ValueError(f"unknown shape {shape!r}; known: box, table, chair, sofa, bed, lamp, plant, stool, shelf")
