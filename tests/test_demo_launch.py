"""launch/demo.py helpers that the end-to-end demo (too slow for the suite) relies on."""

from __future__ import annotations

import json
import os

import pytest

from launch import demo

SAMPLES = [
    {"id": 0, "question_type": "object_counting", "question": "How many chair(s) are in this room?",
     "options": None, "ground_truth": "2", "prediction": "2"},
    {"id": 1, "question_type": "route_planning", "question": "route?", "options": ["A. Turn Left", "B. Turn Back"],
     "ground_truth": "A", "prediction": "B"},
]


def _write(data: str, names: tuple[str, ...]) -> None:
    os.makedirs(os.path.join(data, "baselines"))
    for name in names:
        with open(os.path.join(data, "baselines", f"vsibench_{name}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(s) + "\n" for s in SAMPLES)


@pytest.mark.parametrize("with_text_prior", [True, False])
def test_blind_rows_scores_each_baseline(tmp_path, with_text_prior):
    data, out = str(tmp_path / "data"), str(tmp_path / "eval")
    _write(data, ("chance", "prior") + (("text_prior",) if with_text_prior else ()))
    rows = demo.blind_rows(data, out)
    expected = ["chance", "blind prior"] + (["text prior (blind)"] if with_text_prior else [])
    assert list(rows) == expected  # datasets made before the text prior existed still work
    for path in rows.values():
        with open(path, encoding="utf-8") as f:
            scores = json.load(f)
        assert scores["object_counting"] == pytest.approx(100.0) and scores["route_planning"] == 0.0


def test_other_scene_records_swaps_only_the_video(tmp_path):
    recs = [{"id": i, "dataset": "synthetic", "scene_name": s, "question": f"q{i}", "ground_truth": str(i)}
            for i, s in enumerate(["s2", "s0", "s1", "s0"])]
    src = tmp_path / "test.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    out = demo.other_scene_records(str(src), str(tmp_path / "eval" / "other.jsonl"))
    with open(out, encoding="utf-8") as f:
        got = [json.loads(line) for line in f]
    assert [g["scene_name"] for g in got] == ["s0", "s1", "s2", "s1"]  # next scene, wrapping around
    assert [{k: v for k, v in g.items() if k != "scene_name"} for g in got] == \
        [{k: v for k, v in r.items() if k != "scene_name"} for r in recs]
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(recs[0]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="at least 2 scenes"):
        demo.other_scene_records(str(one), str(tmp_path / "x.jsonl"))
