"""Exact geometry on oriented 3D boxes (the official engine samples points on a 5 cm grid
with open3d; we compute the same quantities exactly, without open3d).

Box convention (official metadata): ``normalizedAxes`` is open3d's ``R.T`` flattened, i.e.
its rows are the box's unit axes in world; ``axesLengths[i]`` is the full length along axis i.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_SIGNS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)  # [8, 3]
# the 12 edges as corner-index pairs (corners differ in exactly one sign)
_EDGES = np.array([(i, j) for i in range(8) for j in range(i + 1, 8) if np.sum(_SIGNS[i] != _SIGNS[j]) == 1])


@dataclass(frozen=True)
class Box:
    """Oriented box: ``center`` [3], ``axes`` [3, 3] (rows = unit axes), ``lengths`` [3]."""

    center: np.ndarray
    axes: np.ndarray
    lengths: np.ndarray

    @property
    def half(self) -> np.ndarray:
        return self.lengths / 2

    def corners(self) -> np.ndarray:
        """[8, 3] world corners."""
        return self.center + (_SIGNS * self.half) @ self.axes

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Edge endpoints ``([12, 3], [12, 3])``."""
        c = self.corners()
        return c[_EDGES[:, 0]], c[_EDGES[:, 1]]


def point_box_distance(points: np.ndarray, box: Box) -> np.ndarray:
    """Euclidean distance from points ``[N, 3]`` to the solid box (0 inside) -> ``[N]``."""
    local = (np.atleast_2d(points) - box.center) @ box.axes.T
    excess = np.maximum(np.abs(local) - box.half, 0.0)
    return np.linalg.norm(excess, axis=-1)


def _segment_segment(p1, q1, p2, q2) -> np.ndarray:
    """Closest distance between segment pairs ``[M, 3]`` (Ericson, Real-Time Collision Detection 5.1.9)."""
    d1, d2, r = q1 - p1, q2 - p2, p1 - p2
    a = np.einsum("ij,ij->i", d1, d1)
    e = np.einsum("ij,ij->i", d2, d2)
    f = np.einsum("ij,ij->i", d2, r)
    c = np.einsum("ij,ij->i", d1, r)
    b = np.einsum("ij,ij->i", d1, d2)
    denom = a * e - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(denom > 1e-12, np.clip((b * f - c * e) / denom, 0, 1), 0.0)
        t = (b * s + f) / e
        s = np.where(t < 0, np.clip(-c / a, 0, 1), np.where(t > 1, np.clip((b - c) / a, 0, 1), s))
    t = np.clip(t, 0, 1)
    diff = (p1 + d1 * s[:, None]) - (p2 + d2 * t[:, None])
    return np.linalg.norm(diff, axis=-1)


def boxes_intersect(a: Box, b: Box) -> bool:
    """Separating-axis test (15 axes: 3 + 3 face normals, 9 edge cross products)."""
    cross = np.cross(a.axes[:, None, :], b.axes[None, :, :]).reshape(9, 3)
    norm = np.linalg.norm(cross, axis=1)
    axes = np.concatenate([a.axes, b.axes, cross[norm > 1e-9] / norm[norm > 1e-9, None]])  # [K, 3]
    ra = np.abs(axes @ a.axes.T) @ a.half
    rb = np.abs(axes @ b.axes.T) @ b.half
    return bool(np.all(np.abs(axes @ (b.center - a.center)) <= ra + rb + 1e-12))


_IA, _IB = (g.reshape(-1) for g in np.meshgrid(np.arange(12), np.arange(12), indexing="ij"))


def box_box_distance(a: Box, b: Box) -> float:
    """Exact minimum distance between two solid oriented boxes (0 when they touch/overlap).

    For disjoint convex polytopes the closest pair is vertex-face, face-vertex or edge-edge;
    point-to-box distance covers the first two exactly and segment-segment the third.
    """
    if boxes_intersect(a, b):
        return 0.0
    d = min(point_box_distance(a.corners(), b).min(), point_box_distance(b.corners(), a).min())
    pa, qa = a.edges()
    pb, qb = b.edges()
    d = min(d, _segment_segment(pa[_IA], qa[_IA], pb[_IB], qb[_IB]).min())
    return float(d)


def category_distance(boxes_a: list[Box], boxes_b: list[Box]) -> float:
    """Min distance between any instance of two categories (the official rule for categories
    with several instances: "measure to the closest")."""
    return min(box_box_distance(x, y) for x in boxes_a for y in boxes_b)


def ccw_angle_deg(forward_xy: np.ndarray, vecs_xy: np.ndarray) -> np.ndarray:
    """Angle in [0, 360) from ``forward_xy`` [2] to each of ``vecs_xy`` [N, 2], counter-clockwise
    seen from above (+z up), so (0, 90) is front-left, (270, 360) front-right."""
    f = np.arctan2(forward_xy[1], forward_xy[0])
    v = np.arctan2(vecs_xy[:, 1], vecs_xy[:, 0])
    return np.degrees(v - f) % 360.0


def camera_center(pose_c2w: np.ndarray) -> np.ndarray:
    """Camera centre in world for a camera-to-world matrix: the translation column.

    (``-R.T @ t`` would be the centre for a *world-to-camera* matrix; see docs/data_engine.md.)
    """
    return np.asarray(pose_c2w, float)[:3, 3].copy()


def world_to_camera(points: np.ndarray, pose_c2w: np.ndarray) -> np.ndarray:
    """World points ``[N, 3]`` -> camera coordinates (OpenCV axes) for a camera-to-world pose."""
    T = np.asarray(pose_c2w, float)
    return (np.atleast_2d(points) - T[:3, 3]) @ T[:3, :3]


def pairwise_box_distances(boxes: list[Box]) -> np.ndarray:
    """``[N, N]`` exact closest-point distances between all boxes, vectorised over pairs (the
    same algorithm as :func:`box_box_distance`, one numpy pass instead of N^2/2 small ones)."""
    n = len(boxes)
    out = np.zeros((n, n))
    if n < 2:
        return out
    ii, jj = np.triu_indices(n, 1)
    C = np.stack([b.center for b in boxes])
    A = np.stack([b.axes for b in boxes])
    H = np.stack([b.half for b in boxes])
    Ca, Cb, Aa, Ab, Ha, Hb = C[ii], C[jj], A[ii], A[jj], H[ii], H[jj]
    # separating-axis test
    cross = np.cross(Aa[:, :, None, :], Ab[:, None, :, :]).reshape(-1, 9, 3)
    norm = np.linalg.norm(cross, axis=-1, keepdims=True)
    cross = np.where(norm > 1e-9, cross / np.maximum(norm, 1e-12), 0.0)  # parallel edges: no axis
    L = np.concatenate([Aa, Ab, cross], axis=1)  # [P, 15, 3]
    ra = np.einsum("pkm,pm->pk", np.abs(np.einsum("pkd,pmd->pkm", L, Aa)), Ha)
    rb = np.einsum("pkm,pm->pk", np.abs(np.einsum("pkd,pmd->pkm", L, Ab)), Hb)
    t = np.abs(np.einsum("pkd,pd->pk", L, Cb - Ca))
    overlap = np.all(t <= ra + rb + 1e-12, axis=1)
    # corners of each box to the other box
    cor_a = Ca[:, None, :] + np.einsum("km,pm,pmd->pkd", _SIGNS, Ha, Aa)  # [P, 8, 3]
    cor_b = Cb[:, None, :] + np.einsum("km,pm,pmd->pkd", _SIGNS, Hb, Ab)

    def pt_box(pts, c, ax, h):
        loc = np.einsum("pkd,pmd->pkm", pts - c[:, None, :], ax)
        return np.linalg.norm(np.maximum(np.abs(loc) - h[:, None, :], 0.0), axis=-1).min(axis=1)

    d = np.minimum(pt_box(cor_a, Cb, Ab, Hb), pt_box(cor_b, Ca, Aa, Ha))
    # edge-edge
    pa, qa = cor_a[:, _EDGES[:, 0]], cor_a[:, _EDGES[:, 1]]  # [P, 12, 3]
    pb, qb = cor_b[:, _EDGES[:, 0]], cor_b[:, _EDGES[:, 1]]
    P = len(ii)
    seg = _segment_segment(pa[:, _IA].reshape(-1, 3), qa[:, _IA].reshape(-1, 3),
                           pb[:, _IB].reshape(-1, 3), qb[:, _IB].reshape(-1, 3)).reshape(P, -1).min(axis=1)
    d = np.where(overlap, 0.0, np.minimum(d, seg))
    out[ii, jj] = d
    out[jj, ii] = d
    return out
