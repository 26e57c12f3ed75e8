"""Determinism, bad metadata errors, and the output formats."""

import copy
import json

import numpy as np
import pytest
from _engine_helpers import frames, scene

from data_pipeline import engine
from data_pipeline.scenes.camera import make_pose
from vlm3r_jax.eval import baselines

OBJS = [("bed", [1.0, 1.0, 0.3], [2.0, 1.6, 0.6]), ("tv", [4.0, 1.0, 1.2], [1.2, 0.1, 0.7]),
        ("sofa", [1.5, 4.0, 0.4], [2.0, 0.9, 0.8]), ("lamp", [4.5, 4.5, 0.8], [0.4, 0.4, 1.6]),
        ("chair", [3.0, 3.0, 0.45], [0.5, 0.5, 0.9]), ("chair", [3.0, 2.0, 0.45], [0.5, 0.5, 0.9]),
        ("desk", [0.6, 2.6, 0.4], [0.6, 1.2, 0.75], 0.3)]


def _fm(n=12):
    poses = [make_pose([2.5 + 0.1 * k, 2.5 - 0.15 * k, 1.5], np.radians(20 * k), -0.2) for k in range(n)]
    vis = [[k % 7, (k + 2) % 7, (k + 4) % 7] for k in range(n)]
    return frames(poses, vis)


def test_same_seed_byte_identical_json():
    sm, fm = scene(OBJS), _fm()
    a = json.dumps(engine.generate_qa(sm, fm, seed=5))
    b = json.dumps(engine.generate_qa(copy.deepcopy(sm), copy.deepcopy(fm), seed=5))
    c = json.dumps(engine.generate_qa(sm, fm, seed=6))
    assert a == b
    assert a != c


def test_official_file_layout_is_accepted():
    sm = scene(OBJS)
    items = engine.generate_qa({"scene0001_00": sm}, {"scene0001_00": _fm()}, seed=0)
    assert items and {i["scene_name"] for i in items} == {"scene0001_00"}
    nested = copy.deepcopy(sm)
    for recs in nested["object_bboxes"].values():
        for r in recs:
            r["normalizedAxes"] = np.reshape(r["normalizedAxes"], (3, 3)).tolist()  # 3x3 also accepted
    assert json.dumps(engine.generate_qa(nested, None, scene_name="x")) == json.dumps(engine.generate_qa(sm, None, scene_name="x"))


@pytest.mark.parametrize("mutate, field", [
    (lambda s, f: s.pop("room_size"), "room_size"),
    (lambda s, f: s["object_bboxes"]["bed"][0].pop("centroid"), "object_bboxes['bed'][0].centroid"),
    (lambda s, f: s["object_bboxes"]["tv"][0].__setitem__("axesLengths", [1.2, 0.0, 0.7]), "object_bboxes['tv'][0].axesLengths"),
    (lambda s, f: s["object_bboxes"]["tv"][0].__setitem__("normalizedAxes", [1, 0, 0, 1, 0, 0, 0, 0, 1]),
     "object_bboxes['tv'][0].normalizedAxes"),
    (lambda s, f: s["object_counts"].__setitem__("chair", 3), "object_counts['chair']"),
    (lambda s, f: s["object_bboxes"]["lamp"][0].__setitem__("centroid", [1, float("nan"), 2]), "object_bboxes['lamp'][0].centroid"),
    (lambda s, f: f["frames"][3].__setitem__("camera_pose_camera_to_world", np.diag([2, 1, 1, 1]).tolist()),
     "frames[3].camera_pose_camera_to_world"),
    (lambda s, f: f["frames"][2].pop("frame_id"), "frames[2].frame_id"),
    (lambda s, f: f.pop("frames"), "frames"),
])
def test_bad_metadata_names_scene_and_field(mutate, field):
    sm, fm = scene(OBJS, name="bad7"), _fm()
    mutate(sm, fm)
    with pytest.raises(engine.MetadataError) as e:
        engine.generate_qa({"scene_bad7": sm}, fm)
    assert "scene 'scene_bad7'" in str(e.value) and f"field '{field}'" in str(e.value)


def test_training_record_wording():
    items = engine.generate_qa(scene(OBJS), _fm(), seed=0)
    na = next(i for i in items if i["question_type"] == "object_counting")
    rec = engine.to_training_record(na)
    assert set(rec) == {"id", "data_source", "scene_name", "question_type", "video", "conversations"}
    assert rec["conversations"][0]["value"] == ("<image>\nThese are frames of a video.\nHow many chair(s) are in this room?\n"
                                                "Please answer the question using a single word or phrase.")
    assert rec["conversations"][1] == {"from": "gpt", "value": "2"}
    mc = next(i for i in items if i["question_type"] == "object_rel_direction_v2")
    text = engine.to_training_record(mc)["conversations"][0]["value"]
    assert text.startswith("<image>\nThese are frames of a video.\nIf I am standing by the ")
    assert text.endswith("\nOptions:\n" + "\n".join(mc["options"]) + "\nAnswer with the option's letter from the given "
                         "choices directly.")
    assert engine.to_training_record(mc)["conversations"][1]["value"] == mc["mc_answer"]
    assert engine.to_training_record(mc)["id"] == engine.to_training_record(copy.deepcopy(mc))["id"]


def test_eval_records_and_baselines():
    items = engine.generate_qa(scene(OBJS), _fm(), seed=0)
    vsi = [r for i, it in enumerate(items) if (r := engine.to_vsibench_record(it, i))]
    vsti = [r for i, it in enumerate(items) if (r := engine.to_vstibench_record(it, i))]
    assert {r["question_type"] for r in vsi} <= set(engine.VSI_EVAL_NAME.values())
    for r in vsi:
        assert set(r) == {"id", "dataset", "scene_name", "question_type", "question", "options", "ground_truth"}
        assert (r["options"] is None) == (r["question_type"] in engine.NA_TYPES)
        assert isinstance(r["ground_truth"], str)
    assert any(r["question_type"] == "camera_movement_direction" for r in vsti) or not any(
        i["question_type"].startswith("camera_movement") for i in items)
    seen = []
    res = baselines.run_baselines(items, {"vsibench": vsi, "vstibench": vsti},
                                  score_fns={"vsibench": lambda s: seen.append(len(s)) or {"overall": 0.0}})
    assert seen == [len(vsi)] * 3 and res["vsibench"]["prior"]["scores"] == {"overall": 0.0}
    for kind in ("prior", "text_prior"):
        for s in res["vsibench"][kind]["samples"]:
            if s["options"] is None:
                float(s["prediction"])
            else:
                assert s["prediction"] in "ABCD"


def _item(qtype, question, gt, options=None, mc=None):
    return {"question_type": qtype, "question": question, "ground_truth": gt, "options": options, "mc_answer": mc}


def test_text_prior_reads_the_question():
    size = "What is the length of the longest dimension (length, width, or height) of the {}, measured in centimeters?"
    near = "Measuring from the closest point of each object, which of these objects ({}) is the closest to the {}?"
    train = [_item("object_size_estimation", size.format("bed"), v) for v in (200, 210, 190)]
    train += [_item("object_size_estimation", size.format("stool"), v) for v in (50, 55, 60, 45, 52)]
    # next to a bed the nightstand wins; next to a sofa the table does
    train += [_item("object_rel_distance_v1", near.format("nightstand, table", "bed"), "nightstand",
                    ["A. nightstand", "B. table"], "A")] * 3
    train += [_item("object_rel_distance_v1", near.format("table, nightstand", "sofa"), "table",
                    ["A. table", "B. nightstand"], "A")] * 4
    recs = [{"question_type": "object_size_estimation", "question": size.format("bed"), "options": None},
            {"question_type": "object_size_estimation", "question": size.format("lamp"), "options": None},
            {"question_type": "object_rel_distance", "question": near.format("table, nightstand", "bed") +
             "\nIf there are multiple instances of an object category, measure to the closest.",
             "options": ["A. table", "B. nightstand"]},
            {"question_type": "object_rel_distance", "question": near.format("nightstand, table", "sofa"),
             "options": ["A. nightstand", "B. table"]}]
    fit = baselines.fit_text_prior(train, "vsibench")
    assert baselines.predict_text_prior(fit, recs, "vsibench") == ["200.0", "57.5", "B", "B"]  # lamp: the type median
    # the answer prior gives one value per task whatever the question says
    prior = baselines.fit_prior(train, "vsibench")
    assert len(set(baselines.predict_prior(prior, recs[:2], "vsibench"))) == 1


def test_missing_fps_skips_or_raises():
    fm = _fm()
    fm.pop("fps")
    items = engine.generate_qa(scene(OBJS), fm)  # dataset "hand" has no known fps
    assert items and not any(i["question_type"] == "obj_appearance_order" for i in items)
    with pytest.raises(engine.MetadataError, match="field 'fps'"):
        engine.generate_qa(scene(OBJS), fm, tasks=["obj_appearance_order"])
