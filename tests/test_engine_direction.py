"""Relative direction / distance on hand-built layouts, and ambiguity margins."""

import itertools

import numpy as np
import pytest
from _engine_helpers import scene

from data_pipeline import engine
from data_pipeline.engine.geometry import Box
from data_pipeline.engine.vsi import relative_direction_answer

SMALL = np.array([0.3, 0.3, 0.5])


def _b(x, y):
    return Box(np.array([x, y, 0.25]), np.eye(3), SMALL)


POS, ORI = _b(0, 0), _b(3, 0)  # standing at the origin, facing +x; +y is the left side (z up)


@pytest.mark.parametrize("q, v1, v2, v3", [
    ((1.5, 2.0), "front-left", "left", "left"),
    ((1.5, -2.0), "front-right", "right", "right"),
    ((-1.0, 2.0), "back-left", "left", "left"),  # 117 deg: still "left" for v2 (back starts at 135)
    ((-1.0, -2.0), "back-right", "right", "right"),
    ((-3.0, 0.8), "back-left", "back", None),  # 165 deg: v3 has no "back" answer -> skipped
    ((-3.0, -0.8), "back-right", "back", None),
])
def test_each_answer_class(q, v1, v2, v3):
    Q = _b(*q)
    assert relative_direction_answer(POS, ORI, Q, 1) == v1
    assert relative_direction_answer(POS, ORI, Q, 2) == v2
    assert relative_direction_answer(POS, ORI, Q, 3) == v3


@pytest.mark.parametrize("angle, version", [(88, 1), (92, 1), (3, 1), (183, 1), (130, 2), (140, 2), (228, 3), (355, 3)])
def test_boundary_cases_are_dropped(angle, version):
    a = np.radians(angle)
    Q = _b(3 * np.cos(a), 3 * np.sin(a))
    assert relative_direction_answer(POS, ORI, Q, version) is None


def test_big_object_straddling_sectors_is_dropped():
    Q = Box(np.array([2.0, 1.9, 0.25]), np.eye(3), np.array([0.3, 4.0, 0.5]))  # long wall-like box
    assert relative_direction_answer(POS, ORI, Q, 1) is None


def test_generated_direction_questions_respect_margins():
    rng = np.random.default_rng(0)
    objs = [(c, [rng.uniform(0, 6), rng.uniform(0, 6), 0.4], [0.5, 0.5, 0.8]) for c in
            ["bed", "tv", "sofa", "lamp", "desk", "plant", "stool", "door"]]
    sm = scene(objs)
    items = engine.generate_qa(sm, None, seed=1, tasks=["object_rel_direction_v1", "object_rel_direction_v2",
                                                        "object_rel_direction_v3"], num_per_task=50)
    assert items
    ctr = {c: np.array(p[:2]) for c, p, _ in objs}
    bounds = {"1": [0, 90, 180, 270, 360], "2": [0, 135, 225, 360], "3": [0, 135, 225, 360]}
    for it in items:
        p, o, q = it["category, positioning object"], it["category, orienting object"], it["category, querying object"]
        f, v = ctr[o] - ctr[p], ctr[q] - ctr[p]
        ang = np.degrees(np.arctan2(f[0] * v[1] - f[1] * v[0], f @ v)) % 360
        assert np.min(np.abs(ang - np.array(bounds[it["question_type"][-1]]))) >= 10
        for a, b in itertools.combinations((p, o, q), 2):
            assert 0.3 <= np.linalg.norm(ctr[a] - ctr[b])  # centroid gap >= box gap >= 0.3


def test_relative_distance_margins():
    # primary "tv" at the origin; candidates at known gaps; lamp and plant only 0.10 m apart in distance
    objs = [("tv", [0, 0, 0.5], [0.2, 0.2, 0.2]),
            ("lamp", [1.1, 0, 0.5], [0.2, 0.2, 0.2]),  # gap 0.9
            ("plant", [0, 1.2, 0.5], [0.2, 0.2, 0.2]),  # gap 1.0 (ambiguous with lamp)
            ("sofa", [-2.2, 0, 0.5], [0.2, 0.2, 0.2]),  # gap 2.0
            ("bed", [0, -3.2, 0.5], [0.2, 0.2, 0.2])]  # gap 3.0
    items = engine.generate_qa(scene(objs, room_size=20), None, tasks=["object_rel_distance_v3"], num_per_task=100)
    asked = {(i["category"], frozenset(o.split(". ")[1] for o in i["options"])): i["ground_truth"] for i in items}
    assert ("tv", frozenset({"lamp", "plant"})) not in asked
    assert asked[("tv", frozenset({"lamp", "sofa"}))] == "lamp"
    assert asked[("tv", frozenset({"bed", "sofa"}))] == "sofa"
    # in a big room (> 40 m^2) the margin is 0.30 m: a 0.2 m difference becomes ambiguous too
    objs[2] = ("plant", [0, 1.3, 0.5], [0.2, 0.2, 0.2])  # gap 1.1 vs lamp 0.9
    small = engine.generate_qa(scene(objs, room_size=20), None, tasks=["object_rel_distance_v3"], num_per_task=100)
    big = engine.generate_qa(scene(objs, room_size=60), None, tasks=["object_rel_distance_v3"], num_per_task=100)

    def has(items):
        return any(i["category"] == "tv" and {o.split(". ")[1] for o in i["options"]} == {"lamp", "plant"} for i in items)

    assert has(small) and not has(big)
