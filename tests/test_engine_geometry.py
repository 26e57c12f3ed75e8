"""Numeric answers recomputed independently from hand-built metadata."""

import numpy as np
import pytest
from _engine_helpers import aabb_distance, scene

from data_pipeline import engine
from data_pipeline.engine.geometry import Box, box_box_distance, point_box_distance

OBJS = [
    ("bed", [1.0, 1.0, 0.3], [2.0, 1.6, 0.6]),
    ("tv", [4.0, 1.0, 1.2], [1.2, 0.1, 0.7]),
    ("sofa", [1.5, 4.02, 0.4], [2.0, 0.9, 0.8]),
    ("lamp", [4.5, 4.5, 0.8], [0.4, 0.4, 1.6]),
    ("chair", [3.0, 3.0, 0.45], [0.5, 0.5, 0.9]),
    ("chair", [3.0, 2.0, 0.45], [0.5, 0.5, 0.9]),
    ("chair", [2.0, 2.6, 0.45], [0.5, 0.5, 0.9]),
]


def _by_type(items, t):
    return [i for i in items if i["question_type"] == t]


def test_numeric_answers_match_independent_formulas():
    sm = scene(OBJS, room_size=23.456)
    items = engine.generate_qa(sm, None, seed=3, num_per_task=100)
    cnt = _by_type(items, "object_counting")
    assert [(i["category"], i["ground_truth"]) for i in cnt] == [("chair", 3)]
    sizes = {i["category"]: i["ground_truth"] for i in _by_type(items, "object_size_estimation")}
    assert sizes == {"bed": 200, "tv": 120, "sofa": 200, "lamp": 160}
    (room,) = _by_type(items, "room_size_estimation")
    assert room["ground_truth"] == 23.5
    geo = {c: (ctr, ln) for c, ctr, ln in OBJS if c != "chair"}
    dist = _by_type(items, "object_abs_distance")
    assert len(dist) == 6  # all pairs of the 4 unique objects are > 0.2 m apart
    for it in dist:
        a, b = it["category, first object"], it["category, second object"]
        d = aabb_distance(*geo[a], *geo[b])
        assert abs(it["ground_truth"] - d) <= 0.05 + 1e-9 and it["ground_truth"] == round(it["ground_truth"], 1), (a, b)
        assert f"between the {a} and the {b}" in it["question"]
    for it in items:  # the correct option is in its letter's slot
        if it["options"]:
            letter_opt = it["options"]["ABCD".index(it["mc_answer"])]
            assert letter_opt == f"{it['mc_answer']}. {it['ground_truth']}"


def test_close_pairs_skipped():
    sm = scene([("bed", [1, 1, 0.3], [2, 2, 0.6]), ("tv", [2.1, 1, 0.3], [0.1, 0.5, 0.5]), ("lamp", [4, 4, 0.8], [0.3, 0.3, 1.6])])
    items = engine.generate_qa(sm, None, tasks=["object_abs_distance"], num_per_task=10)
    pairs = {frozenset((i["category, first object"], i["category, second object"])) for i in items}
    assert frozenset(("bed", "tv")) not in pairs  # 0.05 m apart
    assert len(pairs) == 2


def _random_box(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return Box(rng.uniform(-1, 1, 3), q, rng.uniform(0.2, 1.2, 3))


def _surface_samples(b: Box, step=0.01):
    pts = []
    for ax in range(3):
        o = [k for k in range(3) if k != ax]
        u = np.arange(-b.half[o[0]], b.half[o[0]] + 1e-9, step)
        v = np.arange(-b.half[o[1]], b.half[o[1]] + 1e-9, step)
        uu, vv = np.meshgrid(u, v)
        for s in (-1, 1):
            loc = np.zeros((uu.size, 3))
            loc[:, o[0]], loc[:, o[1]], loc[:, ax] = uu.ravel(), vv.ravel(), s * b.half[ax]
            pts.append(loc)
    return b.center + np.concatenate(pts) @ b.axes


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_box_distance_exact_against_dense_sampling(seed):
    rng = np.random.default_rng(seed)
    a, b = _random_box(rng), _random_box(rng)
    b = Box(b.center + rng.normal(size=3) * 1.5, b.axes, b.lengths)
    exact = box_box_distance(a, b)
    sa = _surface_samples(a, 0.02)
    brute = min(point_box_distance(sa, b).min(), point_box_distance(_surface_samples(b, 0.02), a).min())
    # sampling overestimates by at most the grid diagonal; exact is never above brute force
    assert exact <= brute + 1e-9
    assert brute - exact < 0.02 * np.sqrt(2) + 1e-6


def test_box_distance_cases():
    unit = np.eye(3)
    a = Box(np.zeros(3), unit, np.ones(3))
    assert box_box_distance(a, Box(np.array([2.0, 0, 0]), unit, np.ones(3))) == pytest.approx(1.0)
    assert box_box_distance(a, Box(np.array([2.0, 2.0, 0]), unit, np.ones(3))) == pytest.approx(np.sqrt(2))
    assert box_box_distance(a, Box(np.array([0.5, 0.2, 0.1]), unit, np.ones(3))) == 0.0
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    rot = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
    # a 45-degree box whose corner points at a's face: gap = 2 - 0.5 - sqrt(2)/2
    d = box_box_distance(a, Box(np.array([2.0, 0, 0]), rot, np.ones(3)))
    assert d == pytest.approx(2 - 0.5 - np.sqrt(2) / 2)


def test_pairwise_matches_single_pair():
    from data_pipeline.engine.geometry import pairwise_box_distances

    rng = np.random.default_rng(5)
    boxes = [_random_box(rng) for _ in range(9)]
    boxes = [Box(b.center * 3, b.axes, b.lengths) for b in boxes]
    M = pairwise_box_distances(boxes)
    for i in range(9):
        for j in range(9):
            ref = 0.0 if i == j else box_box_distance(boxes[i], boxes[j])
            assert M[i, j] == pytest.approx(ref, abs=1e-12)
