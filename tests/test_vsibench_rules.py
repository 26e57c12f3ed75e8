"""The two named VSI-Bench rule sets: ``rules="paper"`` (thinking-in-space, the paper's table) and
``rules="lmms-eval"`` (lmms-eval 0.7: first number anywhere, number words included). Each agrees
with the code it follows: fixed cases restated from lmms-eval 0.7's ``extract_number``, and, when
lmms-eval is installed (the ``test`` extra has it), its own task code on the same predictions."""

from __future__ import annotations

import pytest

from vlm3r_jax.eval import metrics, vsibench

CASES = [  # (prediction, lmms-eval 0.7 value, paper value)
    ("3", 3.0, 3.0),
    ("3.", 3.0, 3.0),
    ("About 3.2 m", 3.2, None),
    ("3.2 meters", 3.2, 3.2),
    ("three chairs", 3.0, None),
    ("Three boxes.", 3.0, None),
    ("twenty-one", 21.0, None),
    ("three hundred and twenty-one", 321.0, None),
    ("two thousand five hundred", 2500.0, None),
    ("one apple, room 2", 1.0, None),
    ("room 2, one apple", 2.0, None),
    ("-1.5", -1.5, -1.5),
    ("none", None, None),
    ("", None, None),
    ("someone said 4", 4.0, None),
    ("1,000", 1.0, None),
]

SAMPLES = [
    {"id": f"n{i}", "question_type": qt, "ground_truth": gt, "prediction": pred}
    for i, (qt, gt, pred) in enumerate([
        ("object_counting", "3", "three"), ("object_counting", "4", "4"), ("object_counting", "2", "About 2"),
        ("object_abs_distance", "2.5", "2.4 m"), ("object_abs_distance", "1.2", "It is 1.3 meters"),
        ("object_size_estimation", "120", "one hundred twenty"), ("room_size_estimation", "20", "20.5"),
        ("object_rel_direction_easy", "A", "A."), ("object_rel_direction_medium", "B", "b"),
        ("object_rel_direction_hard", "C", "The answer is C"), ("object_rel_distance", "D", "D"),
        ("route_planning", "A", "B"), ("obj_appearance_order", "C", "C. chair"),
    ])
]


@pytest.mark.parametrize("text, lmms, paper", CASES)
def test_numeric_extraction_per_rule_set(text, lmms, paper):
    assert metrics.first_number(text) == lmms
    assert metrics.to_float(metrics.parse_prediction(text)) == paper


def test_rule_sets_differ_only_on_numeric_answers():
    paper, lmms = vsibench.score(SAMPLES), vsibench.score(SAMPLES, rules="lmms-eval")
    for task in ("object_rel_direction", "object_rel_distance", "route_planning", "obj_appearance_order"):
        assert paper[task] == lmms[task]
    assert paper["object_counting"] < lmms["object_counting"] and paper["overall"] < lmms["overall"]
    with pytest.raises(ValueError, match="rules='thinking'"):
        vsibench.score(SAMPLES, rules="thinking")


def _lmms_eval_vsibench_utils():
    """lmms-eval's ``tasks/vsibench/utils.py`` loaded alone: ``lmms_eval.tasks`` imports the whole
    harness (accelerate, torch...), the file itself only datasets/pandas/yaml/loguru."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("lmms_eval")
    if spec is None:
        pytest.skip("lmms-eval is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "tasks", "vsibench", "utils.py")
    for dep in ("datasets", "pandas", "yaml", "loguru"):
        pytest.importorskip(dep)
    mod_spec = importlib.util.spec_from_file_location("_lmms_eval_vsibench_utils", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def test_lmms_eval_rules_match_lmms_eval_task_code():
    utils = _lmms_eval_vsibench_utils()
    docs = [utils.vsibench_process_results(dict(s), [s["prediction"]])["vsibench_overall"] for s in SAMPLES]
    upstream = utils._compute_all_subscores(docs) if hasattr(utils, "_compute_all_subscores") else \
        utils.vsibench_aggregate_results(docs)
    ours, per_sample = vsibench.score_details(SAMPLES, rules="lmms-eval")
    for doc, mine in zip(docs, per_sample, strict=True):
        assert mine["score"] == doc.get("accuracy", doc.get("MRA:.5:.95:.05"))
    assert ours["overall"] == pytest.approx(upstream["overall"] * 100, abs=1e-9)
    # the per-sample log we write scores the same under lmms-eval's aggregation
    from vlm3r_jax.eval import lmms_eval_io

    records = [{k: v for k, v in s.items() if k != "prediction"} for s in SAMPLES]
    lines, _ = lmms_eval_io.sample_lines(records, {s["id"]: s["prediction"] for s in SAMPLES})
    again = utils._compute_all_subscores([line["vsibench_overall"] for line in lines])
    assert again["overall"] == pytest.approx(upstream["overall"], abs=1e-12)


def test_lmms_eval_results_and_log_samples_round_trip(tmp_path):
    """launch.eval's lmms-eval files read back through --lmms_eval_samples give the same scores."""
    import json

    from configs import eval_vsibench
    from launch.eval import score_lmms_eval_samples
    from vlm3r_jax.eval import lmms_eval_io

    records = [{k: v for k, v in s.items() if k != "prediction"} for s in SAMPLES]
    paths = lmms_eval_io.write(str(tmp_path), records, {s["id"]: s["prediction"] for s in SAMPLES}, "test")
    res = json.loads(open(paths["results"]).read())["results"]["vsibench"]
    want = vsibench.score(SAMPLES, rules="lmms-eval")
    assert res["vsibench_overall,none"] == round(want["overall"] / 100, 6)
    assert res["object_counting_mra,none"] == round(want["object_counting"] / 100, 6)
    assert lmms_eval_io.read_log_samples(paths["samples"]) == [dict(s) for s in SAMPLES]
    cfg = eval_vsibench.get_config()
    for rules in ("paper", "lmms-eval"):
        cfg.rules = rules
        got = score_lmms_eval_samples(cfg, paths["samples"], str(tmp_path / rules))
        assert got == vsibench.score(SAMPLES, rules=rules)
        assert f"Scoring rules: {rules}" in (tmp_path / rules / "table.md").read_text()
    with pytest.raises(ValueError, match="not an lmms-eval samples file"):
        (tmp_path / "bad.jsonl").write_text("{oops\n")
        lmms_eval_io.read_log_samples(str(tmp_path / "bad.jsonl"))
