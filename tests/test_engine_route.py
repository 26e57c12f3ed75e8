"""Route planning (our design): turns on hand-built layouts, margins, question wording."""

import numpy as np
import pytest
from _engine_helpers import scene

from data_pipeline import engine
from data_pipeline.engine.route import actions_text, classify_turn, route_turns


@pytest.mark.parametrize("theta, expected", [(90, "Turn Left"), (-90, "Turn Right"), (180, "Turn Back"),
                                             (-160, "Turn Back"), (46, "Turn Left"), (10, None), (-30, None),
                                             (130, None), (-140, None), (125, None)])
def test_classify_turn(theta, expected):
    assert classify_turn(theta) == expected


def test_route_turns_square_walk():
    pts = np.array([[0, 0], [3, 0], [3, 3], [0, 3]], float)  # left, left
    assert route_turns(pts) == ["Turn Left", "Turn Left"]
    assert route_turns(pts[::-1]) == ["Turn Right", "Turn Right"]
    assert route_turns(np.array([[0, 0], [3, 0], [0.2, 0.3]])) == ["Turn Back"]
    assert route_turns(np.array([[0, 0], [3, 0], [6, 0.5]])) is None  # straight on: nothing to fill in
    assert route_turns(np.array([[0, 0], [0.5, 0], [0.5, 3]])) is None  # first leg too short


def test_actions_text():
    assert actions_text(["tv", "shower", "toilet"]) == (
        "1. Go forward until the tv 2. [please fill in] 3. Go forward until the shower 4. [please fill in] "
        "5. Go forward until the toilet. You have reached the final destination.")


def test_generated_routes_match_centroid_geometry():
    objs = [("bed", [0.5, 0.5, 0.3], [0.6, 0.6, 0.6]), ("tv", [4.0, 0.5, 1.0], [0.6, 0.1, 0.5]),
            ("sofa", [4.0, 4.0, 0.4], [0.8, 0.8, 0.8]), ("lamp", [0.5, 4.0, 0.8], [0.3, 0.3, 1.6]),
            ("desk", [2.2, 2.3, 0.4], [0.6, 0.6, 0.8])]
    ctr = {c: np.array(p[:2]) for c, p, _ in objs}
    items = engine.generate_qa(scene(objs), None, tasks=["route_planning"], num_per_task=20, seed=2)
    assert items
    for it in items:
        chain = it["route"]
        assert it["question"].startswith(f"You are a robot beginning at the {chain[0]} facing the {chain[1]}. "
                                          f"You want to navigate to the {chain[-1]}.")
        turns = []
        for a, b, c in zip(chain, chain[1:], chain[2:]):
            u, v = ctr[b] - ctr[a], ctr[c] - ctr[b]
            ang = np.degrees(np.arctan2(u[0] * v[1] - u[1] * v[0], u @ v))
            assert abs(abs(ang) - 135) >= 15 and abs(ang) >= 45  # unambiguous turns only
            turns.append("Turn Back" if abs(ang) >= 150 else ("Turn Left" if ang > 0 else "Turn Right"))
        assert it["ground_truth"] == ", ".join(turns)
        assert it["question"].count("[please fill in]") == len(turns) + 1  # + the note's mention
        opts = [o.split(". ", 1)[1] for o in it["options"]]
        assert len(set(opts)) == len(opts) == (3 if len(turns) == 1 else 4)
        assert it["options"]["ABCD".index(it["mc_answer"])].endswith(it["ground_truth"])
