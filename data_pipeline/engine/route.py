"""Route planning (``route_planning``) — our design; the official generator was never released.

VSI-Bench's route questions (4,225 training items made in a simulator; the benchmark's
template and example are public) look like::

    You are a robot beginning at the bed facing the tv. You want to navigate to the toilet.
    You will perform the following actions (Note: for each [please fill in], choose either
    'turn back,' 'turn left,' or 'turn right.'): 1. Go forward until the tv 2. [please fill in]
    3. Go forward until the shower 4. [please fill in] 5. Go forward until the toilet.
    You have reached the final destination.

Our generator builds such a route from the scene's *unique* objects (so every name is
unambiguous) on the floor plane:

1. pick a start S, a chain of 1-2 intermediate landmarks W1..Wk and a destination D, all
   distinct; the robot starts at S's centroid facing W1 (so step 1 is "Go forward until W1",
   exactly as in the benchmark example, and "facing" names W1);
2. walk the chain centroid to centroid; at each landmark the turn is the signed angle θ
   (counter-clockwise = left, z up) between the incoming and the outgoing leg;
3. classify θ: left if θ in [45°, 135° − m], right if θ in [−(135° − m), −45°],
   back if |θ| ≥ 135° + m (the v2 rule: "back" means turning at least 135°); anything else
   — going (almost) straight, or within the margin m (15°) of the 135° boundary — rejects
   the route, so every filled-in turn is unambiguous;
4. legs shorter than 1 m are rejected (the robot could not "go forward until" them), and so
   are landmarks closer than 0.3 m to each other;
5. every turn becomes "[please fill in]"; the answer is the sequence of turns, e.g.
   "Turn Left, Turn Back". Options: the correct sequence plus distinct random sequences from
   {Turn Left, Turn Right, Turn Back}^k (4 options; 3 when k = 1, since only 3 exist).

It ignores obstacles between landmarks on purpose: the benchmark's questions are about the
turn directions between landmarks, not about path finding.
"""

from __future__ import annotations

import itertools

import numpy as np

from data_pipeline.engine import templates as T
from data_pipeline.engine.metadata import Scene
from data_pipeline.engine.options import LetterBalancer, lettered

TURNS = ("Turn Left", "Turn Right", "Turn Back")


def classify_turn(theta_deg: float, margin: float = 15.0) -> str | None:
    """Signed turn angle (deg, counter-clockwise positive) -> turn name, or None if ambiguous."""
    a = abs(theta_deg)
    if a >= 135.0 + margin:
        return "Turn Back"
    if 45.0 <= a <= 135.0 - margin:
        return "Turn Left" if theta_deg > 0 else "Turn Right"
    return None


def route_turns(points_xy: np.ndarray, margin: float = 15.0, min_leg: float = 1.0) -> list[str] | None:
    """Turns at the interior points of a polyline ``[k + 2, 2]`` (start, landmarks..., goal)."""
    legs = np.diff(points_xy, axis=0)
    if np.any(np.linalg.norm(legs, axis=1) < min_leg):
        return None
    out = []
    for u, v in itertools.pairwise(legs):
        theta = np.degrees(np.arctan2(u[0] * v[1] - u[1] * v[0], u @ v))
        t = classify_turn(float(theta), margin)
        if t is None:
            return None
        out.append(t)
    return out


def actions_text(landmarks: list[str]) -> str:
    """"1. Go forward until the W1 2. [please fill in] 3. Go forward until the D. You have reached..."."""
    steps, k = [], 1
    for i, name in enumerate(landmarks):
        if i > 0:
            steps.append(f"{k}. [please fill in]")
            k += 1
        steps.append(f"{k}. Go forward until the {name}")
        k += 1
    return " ".join(steps) + ". You have reached the final destination."


def route_planning(scene: Scene, rng, n: int, bal: LetterBalancer, cfg) -> list[dict]:
    cats = sorted(scene.unique_categories)
    if len(cats) < 3:
        return []
    margin = getattr(cfg, "route_turn_margin_deg", 15.0)
    centre = {c: scene.boxes[c][0].center[:2] for c in cats}
    out, seen = [], set()
    for _ in range(300):
        if len(out) >= n:
            break
        k = int(rng.integers(1, 3))
        if len(cats) < k + 2:
            k = len(cats) - 2
        chain = [cats[i] for i in rng.choice(len(cats), size=k + 2, replace=False)]
        key = tuple(chain)
        if key in seen:
            continue
        seen.add(key)
        if any(scene.category_distance(a, b) < 0.3 for a, b in itertools.combinations(chain, 2)):
            continue
        turns = route_turns(np.array([centre[c] for c in chain]), margin)
        if turns is None:
            continue
        gt = ", ".join(turns)
        n_opt = 3 if k == 1 else 4
        opts = [gt]
        for _try in range(100):
            cand = ", ".join(TURNS[int(i)] for i in rng.integers(0, 3, size=k))
            if cand not in opts:
                opts.append(cand)
            if len(opts) == n_opt:
                break
        opts, letter = bal.place("route_planning", opts, gt, rng)
        item = {"dataset": scene.dataset, "scene_name": scene.name, "video_path": scene.video_path,
                "question_type": "route_planning", "route": chain,
                "question": T.ROUTE_PLAN.format(start_object=chain[0], facing_object=chain[1],
                                                destination_object=chain[-1], actions=actions_text(chain[1:])),
                "options": lettered(opts), "ground_truth": gt, "mc_answer": letter}
        out.append(item)
    return out
