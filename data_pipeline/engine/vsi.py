"""The 8 VSI-Bench task generators (spatial questions about the whole scene).

Each generator takes a parsed :class:`~data_pipeline.engine.metadata.Scene`, a seeded
``np.random.Generator``, the number of items wanted and a shared
:class:`~data_pipeline.engine.options.LetterBalancer`, and returns raw QA items. Candidates
are enumerated in a fixed order, shuffled with the generator, and filtered *until* ``n``
items pass (the official code subsamples first and filters after, which loses items).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from data_pipeline.engine import templates as T
from data_pipeline.engine.geometry import box_box_distance, category_distance, ccw_angle_deg  # noqa: F401
from data_pipeline.engine.metadata import Scene
from data_pipeline.engine.options import LetterBalancer, count_options, lettered, numeric_options


@dataclass
class VSIConfig:
    abs_dist_min: float = 0.2  # pairs closer than this (m, after rounding) are skipped
    rel_dist_min_closest: float = 0.15  # closest candidate nearer than this -> ambiguous
    rel_dist_margin_small: float = 0.15  # candidate distances must differ by more than this...
    rel_dist_margin_large: float = 0.30  # ...or this in rooms larger than rel_dist_large_room m^2
    rel_dist_large_room: float = 40.0
    rel_dir_min_dist: float = 0.30  # pairwise box distances of the 3 objects within [min, max]
    rel_dir_max_dist: float = 5.0
    rel_dir_boundary_deg: float = 10.0  # centroid angle at least this far from a sector boundary
    appearance_margin_s: float = 1.0  # first-appearance times (rounded s) must differ by more
    route_turn_margin_deg: float = 15.0


def _base(scene: Scene, qtype: str) -> dict:
    return {"dataset": scene.dataset, "scene_name": scene.name, "video_path": scene.video_path, "question_type": qtype}


def _mc(item: dict, options: list, gt, letter: str) -> dict:
    item["options"] = lettered(options)
    item["ground_truth"] = gt
    item["mc_answer"] = letter
    return item


def _shuffled(rng, cands):
    return [cands[i] for i in rng.permutation(len(cands))]


def object_counting(scene: Scene, rng, n: int, bal: LetterBalancer, cfg: VSIConfig) -> list[dict]:
    out = []
    for cat in _shuffled(rng, sorted(c for c, k in scene.counts.items() if k > 1)):
        gt = scene.counts[cat]
        opts, letter = bal.place("object_counting", count_options(gt, rng), gt, rng)
        item = _base(scene, "object_counting")
        item["category"] = cat
        item["question"] = T.OBJ_COUNT.format(category=cat)
        out.append(_mc(item, opts, gt, letter))
        if len(out) >= n:
            break
    return out


def object_size_estimation(scene: Scene, rng, n: int, bal: LetterBalancer, cfg: VSIConfig) -> list[dict]:
    out = []
    for cat in _shuffled(rng, sorted(scene.unique_categories)):
        gt = int(round(float(np.max(scene.boxes[cat][0].lengths)) * 100))
        opts = numeric_options(gt, rng, lower=0.4, upper=1.8, decimals=0)
        if opts is None:
            continue
        opts, letter = bal.place("object_size_estimation", opts, gt, rng)
        item = _base(scene, "object_size_estimation")
        item["category"] = cat
        item["question"] = T.OBJ_SIZE.format(category=cat)
        out.append(_mc(item, opts, gt, letter))
        if len(out) >= n:
            break
    return out


def room_size_estimation(scene: Scene, rng, n: int, bal: LetterBalancer, cfg: VSIConfig) -> list[dict]:
    gt = round(scene.room_size, 1)
    opts = numeric_options(gt, rng)
    if opts is None or n <= 0:
        return []
    opts, letter = bal.place("room_size_estimation", opts, gt, rng)
    item = _base(scene, "room_size_estimation")
    item["question"] = T.ROOM_SIZE
    return [_mc(item, opts, gt, letter)]


def object_abs_distance(scene: Scene, rng, n: int, bal: LetterBalancer, cfg: VSIConfig) -> list[dict]:
    out = []
    dist = scene.category_distance
    pairs = list(itertools.combinations(sorted(scene.unique_categories), 2))
    for a, b in _shuffled(rng, pairs):
        if rng.random() < 0.5:
            a, b = b, a
        gt = round(dist(a, b), 1)
        if gt < cfg.abs_dist_min:
            continue
        opts = numeric_options(gt, rng)
        if opts is None:
            continue
        opts, letter = bal.place("object_abs_distance", opts, gt, rng)
        item = _base(scene, "object_abs_distance")
        item["category, first object"] = a
        item["category, second object"] = b
        item["question"] = T.OBJ_ABS_DISTANCE.format(object1=a, object2=b)
        out.append(_mc(item, opts, gt, letter))
        if len(out) >= n:
            break
    return out


def _rel_distance(k: int):
    qtype = f"object_rel_distance_v{ {4: 1, 3: 2, 2: 3}[k] }"

    def gen(scene: Scene, rng, n: int, bal: LetterBalancer, cfg: VSIConfig) -> list[dict]:
        out = []
        dist = scene.category_distance
        cats = sorted(scene.counts)
        margin = cfg.rel_dist_margin_large if scene.room_size > cfg.rel_dist_large_room else cfg.rel_dist_margin_small
        cands = [(p, combo) for p in sorted(scene.unique_categories)
                 for combo in itertools.combinations([c for c in cats if c != p], k)]
        # the number of combinations explodes in big scenes; a few hundred candidates suffice
        if len(cands) > 400:
            cands = [cands[i] for i in np.sort(rng.choice(len(cands), 400, replace=False))]
        for primary, combo in _shuffled(rng, cands):
            d = [dist(c, primary) for c in combo]
            if min(d) < cfg.rel_dist_min_closest:
                continue
            if any(abs(x - y) <= margin for x, y in itertools.combinations(d, 2)):
                continue
            gt = combo[int(np.argmin(d))]
            opts, letter = bal.place(qtype, list(combo), gt, rng)
            item = _base(scene, qtype)
            item["category"] = primary
            names = dict(zip(("choice_a", "choice_b", "choice_c", "choice_d"), opts))
            item["question"] = T.OBJ_REL_DISTANCE[k].format(category=primary, **names)
            out.append(_mc(item, opts, gt, letter))
            if len(out) >= n:
                break
        return out

    gen.__name__ = qtype
    return gen


object_rel_distance_v1 = _rel_distance(4)
object_rel_distance_v2 = _rel_distance(3)
object_rel_distance_v3 = _rel_distance(2)

# sector boundaries (deg, counter-clockwise from "facing") and labels per version
_DIR_SECTORS = {
    1: ([0, 90, 180, 270, 360], ["front-left", "back-left", "back-right", "front-right"]),
    2: ([0, 135, 225, 360], ["left", "back", "right"]),
    3: ([0, 135, 225, 360], ["left", None, "right"]),  # v3 drops "back" items
}
_DIR_OPTIONS = {1: ["front-left", "front-right", "back-left", "back-right"], 2: ["left", "right", "back"], 3: ["left", "right"]}


def relative_direction_answer(pos_box, ori_box, qry_box, version: int, boundary_deg: float = 10.0) -> str | None:
    """Answer of "standing by pos, facing ori, where is qry" or None when ambiguous.

    Angles are measured on the floor plane (x, y; z up), counter-clockwise from the facing
    direction, so 0-90 deg is front-left. Ambiguous: the querying centroid within
    ``boundary_deg`` of a sector boundary, or more than 2 of its 8 corners in another sector
    than its centroid (official rule). The official v1 only checks the upper boundary of
    each quadrant; we check both sides.
    """
    bounds, labels = _DIR_SECTORS[version]
    fwd = (ori_box.center - pos_box.center)[:2]
    if np.linalg.norm(fwd) < 1e-6:
        return None
    pts = np.concatenate([qry_box.center[None], qry_box.corners()])[:, :2] - pos_box.center[:2]
    ang = ccw_angle_deg(fwd, pts)
    sector = np.digitize(ang, bounds[1:-1])
    if np.sum(sector[1:] != sector[0]) > 2:
        return None
    if np.min(np.abs(ang[0] - np.array(bounds))) < boundary_deg:
        return None
    return labels[int(sector[0])]


def _rel_direction(version: int):
    qtype = f"object_rel_direction_v{version}"

    def gen(scene: Scene, rng, n: int, bal: LetterBalancer, cfg: VSIConfig) -> list[dict]:
        out = []
        dist = scene.category_distance
        triples = list(itertools.combinations(sorted(scene.unique_categories), 3))
        for tri in _shuffled(rng, triples):
            if any(not (cfg.rel_dir_min_dist <= dist(a, b) <= cfg.rel_dir_max_dist)
                   for a, b in itertools.combinations(tri, 2)):
                continue
            perms = [(tri[0], tri[1], tri[2]), (tri[0], tri[2], tri[1]), (tri[1], tri[0], tri[2])]
            for p, o, q in _shuffled(rng, perms):
                gt = relative_direction_answer(scene.boxes[p][0], scene.boxes[o][0], scene.boxes[q][0], version,
                                               cfg.rel_dir_boundary_deg)
                if gt is None:
                    continue
                opts, letter = bal.place(qtype, list(_DIR_OPTIONS[version]), gt, rng)
                item = _base(scene, qtype)
                item["category, positioning object"] = p
                item["category, orienting object"] = o
                item["category, querying object"] = q
                item["question"] = T.OBJ_REL_DIRECTION[version].format(
                    positioning_object=p, orienting_object=o, querying_object=q)
                out.append(_mc(item, opts, gt, letter))
                break  # one question per triple keeps the set diverse
            if len(out) >= n:
                break
        return out

    gen.__name__ = qtype
    return gen


object_rel_direction_v1 = _rel_direction(1)
object_rel_direction_v2 = _rel_direction(2)
object_rel_direction_v3 = _rel_direction(3)


def first_appearance_seconds(scene: Scene) -> dict[str, float]:
    """Category -> first time (s, rounded to whole seconds as officially) any of its instances
    has a 2D box; needs the frame metadata and an fps."""
    if scene.fps is None:
        raise ValueError(f"scene '{scene.name}': field 'fps': no fps for dataset '{scene.dataset}'; add 'fps' to the "
                         "frame metadata (official table covers scannet, scannetpp, arkitscenes)")
    first: dict[str, float] = {}
    for fr in scene.frames:  # sorted by frame_id
        for iid in fr.visible:
            cat = scene.inst2cat[iid]
            if cat not in first:
                first[cat] = float(round(fr.frame_id / scene.fps))
    return first


def obj_appearance_order(scene: Scene, rng, n: int, bal: LetterBalancer, cfg: VSIConfig) -> list[dict]:
    if not scene.frames:
        return []
    times = first_appearance_seconds(scene)
    out = []
    combos = list(itertools.combinations(sorted(times), 4))
    if len(combos) > 2000:
        combos = [combos[i] for i in np.sort(rng.choice(len(combos), 2000, replace=False))]
    for combo in _shuffled(rng, combos):
        ts = [times[c] for c in combo]
        if any(abs(a - b) <= cfg.appearance_margin_s for a, b in itertools.combinations(ts, 2)):
            continue
        gt = ", ".join(sorted(combo, key=lambda c: times[c]))
        opts = [gt]
        for _ in range(100):
            perm = ", ".join(combo[i] for i in rng.permutation(4))
            if perm not in opts:
                opts.append(perm)
            if len(opts) == 4:
                break
        opts, letter = bal.place("obj_appearance_order", opts, gt, rng)
        mention = [combo[i] for i in rng.permutation(4)]
        item = _base(scene, "obj_appearance_order")
        item["categories_involved"] = list(combo)
        item["question"] = T.APPEARANCE_ORDER.format(choice_a=mention[0], choice_b=mention[1],
                                                     choice_c=mention[2], choice_d=mention[3])
        out.append(_mc(item, opts, gt, letter))
        if len(out) >= n:
            break
    return out


def pair_distance(scene: Scene, a: str, b: str) -> float:
    """Exact closest-point distance between two categories (min over their instances)."""
    return category_distance(scene.boxes[a], scene.boxes[b])


__all__ = [
    "VSIConfig", "box_box_distance", "first_appearance_seconds", "obj_appearance_order", "object_abs_distance",
    "object_counting", "object_rel_direction_v1", "object_rel_direction_v2", "object_rel_direction_v3",
    "object_rel_distance_v1", "object_rel_distance_v2", "object_rel_distance_v3", "object_size_estimation",
    "pair_distance", "relative_direction_answer", "room_size_estimation",
]
