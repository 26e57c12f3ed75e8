"""Runner / launcher tests on tiny generated benchmark directories: resume == uninterrupted,
failures and malformed records in the footer and the denominators, baselines, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from vlm3r_jax.eval import baselines, report, runner, tasks, vsibench
from vlm3r_jax.eval import records as records_lib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
LETTERS = ["A", "B", "C", "D"]


def _write_mp4(path: str, frames: int = 3) -> None:
    import av

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, "w") as c:
        s = c.add_stream("mpeg4", rate=4)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _record(i: int, qt: str, benchmark: str, rng: np.random.Generator, scene: str) -> dict:
    mc = tasks.is_multiple_choice(qt, benchmark)
    rec = {"id": i, "question_type": qt, "question": f"question {i}?", "options": None}
    if mc:
        letter = LETTERS[int(rng.integers(4))]
        rec["options"] = [f"{x}. thing {x.lower()}" for x in LETTERS]
        if benchmark == "vstibench":
            rec.update(ground_truth=f"thing {letter.lower()}", mc_answer=letter)
        else:
            rec["ground_truth"] = letter
    else:
        rec["ground_truth"] = float(np.round(rng.uniform(0.5, 9), 1))
        if benchmark == "vstibench":
            rec["mc_answer"] = "A"
    if benchmark == "vstibench":
        rec["video_path"] = f"videos/{scene}.mp4"
    else:
        rec["dataset"], rec["scene_name"] = scene.split("/")
    return rec


def make_bench(
    root: str, benchmark: str = "vsibench", per_type: int = 3, extras: bool = True, videos: bool = True
) -> dict:
    """A tiny benchmark dir. With ``extras``: one record whose video is missing, one malformed
    (no ground_truth), one with an unknown question_type and one undecodable JSONL line."""
    rng = np.random.default_rng(0)
    scenes = ["scannet/scene0000_00", "arkitscenes/41069025"]
    types = tasks.mc_types(benchmark) + tasks.na_types(benchmark)
    recs = [
        _record(i, qt, benchmark, rng, scenes[i % 2]) for i, qt in enumerate(t for t in types for _ in range(per_type))
    ]
    info = {"n_valid": len(recs)}
    if extras:
        n = len(recs)
        missing = _record(n, types[0], benchmark, rng, "scannet/scene9999_00")
        malformed = _record(n + 1, types[-1], benchmark, rng, scenes[0])
        del malformed["ground_truth"]
        unknown = _record(n + 2, types[0], benchmark, rng, scenes[0])
        unknown["question_type"] = "object_teleportation"
        recs += [missing, malformed, unknown]
        info.update(missing=str(n), malformed=str(n + 1), unknown=str(n + 2))
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "test.jsonl"), "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
        if extras:
            f.write('{"id": 999, "question_type": \n')  # undecodable line
    if videos:
        for scene in scenes:
            _write_mp4(os.path.join(root, "videos" if benchmark == "vstibench" else "", scene + ".mp4"))
    return info


def noisy_oracle(benchmark: str = "vsibench"):
    """Deterministic per id: right answer, wrong letter / off-by-30% number, or garbage."""
    scorer = runner.SCORERS[benchmark]

    def predict(batch):
        out = []
        for rec in batch:
            k = zlib.crc32(str(rec["id"]).encode()) % 3
            ans = scorer.answer_of(rec)
            if tasks.is_multiple_choice(rec["question_type"], benchmark):
                out.append([f"{ans}.", "Z", "(A)"][k])
            else:
                out.append([f"{ans} meters", f"{float(ans) * 1.3:.2f}", "dunno"][k])
        return out

    predict.name = "oracle"
    return predict


class Crash(BaseException):
    """Not an Exception: escapes the per-record isolation like a kill would."""


def test_resume_gives_the_same_table_as_one_run(tmp_path):
    data = str(tmp_path / "bench")
    make_bench(data)
    recs = records_lib.load_records(data, "vsibench")
    full = runner.run_eval(
        recs, noisy_oracle(), str(tmp_path / "full"), batch_size=4, progress=False, print_table=False
    )

    calls = []
    inner = noisy_oracle()

    def crashing(batch):
        calls.append([r["id"] for r in batch])
        if len(calls) == 3:
            raise Crash()
        return inner(batch)

    crashing.name = "oracle"
    work = str(tmp_path / "resumed")
    with pytest.raises(Crash):
        runner.run_eval(recs, crashing, work, batch_size=4, progress=False, print_table=False)
    samples = os.path.join(work, runner.SAMPLES_FILE)
    done_before = set(runner.read_samples(samples))
    assert 0 < len(done_before) < len(recs)
    with open(samples, "a") as f:  # a torn line, as from a kill in the middle of a write
        f.write('{"id": "12", "predic')
    seen = []

    def counting(batch):
        seen.extend(r["id"] for r in batch)
        return inner(batch)

    counting.name = "oracle"
    resumed = runner.run_eval(recs, counting, work, batch_size=3, progress=False, print_table=False)
    expected = {
        r["id"] for r in recs if not r["_malformed"] and os.path.exists(r["video_path"]) and r["id"] not in done_before
    }
    assert sorted(seen) == sorted(expected)  # exactly the unfinished samples are run, once
    assert set(seen).isdisjoint({i for batch in calls[:2] for i in batch})  # finished samples are skipped
    assert resumed["scores"] == full["scores"]
    assert resumed["table"] == full["table"]
    assert resumed["footer"] == full["footer"]
    lines = open(samples).read().splitlines()
    assert len(lines) == len(recs) and all(json.loads(x) for x in lines)  # torn line was cut off


def test_failures_and_malformed_stay_in_the_denominator(tmp_path):
    data = str(tmp_path / "bench")
    info = make_bench(data)
    recs = records_lib.load_records(data, "vsibench")
    assert len(recs) == info["n_valid"] + 4  # nothing dropped, the bad JSON line included

    inner = noisy_oracle()
    bad_id = recs[5]["id"]

    def flaky(batch):
        if any(r["id"] == bad_id for r in batch):
            raise RuntimeError("decoder exploded")
        return inner(batch)

    res = runner.run_eval(recs, flaky, str(tmp_path / "w"), batch_size=4, progress=False, print_table=False)
    footer = res["footer"]
    failed = {f["id"]: f["reason"] for f in footer["failed"]}
    assert set(failed) == {info["missing"], bad_id}
    assert "video missing" in failed[info["missing"]] and "decoder exploded" in failed[bad_id]
    malformed = {m["id"] for m in footer["malformed"]}
    assert {info["malformed"], info["unknown"]} <= malformed and len(malformed) == 3  # + the bad JSON line
    assert footer["n_unattributed"] == 2  # unknown type and the bad JSON line enter no task
    # the batch neighbours of the failing record were still answered
    lines = runner.read_samples(os.path.join(tmp_path / "w", runner.SAMPLES_FILE))
    assert all(lines[r["id"]]["status"] == "ok" for r in recs[4:8] if r["id"] != bad_id)

    # denominators: every scoreable record counts, failures with score 0
    assert res["counts"]["_total"] == info["n_valid"] + 2
    expected_samples = []
    for r in recs:
        if r.get("question_type") not in tasks.VSI_MC_TYPES + tasks.VSI_NA_TYPES:
            continue
        ok = not r["_malformed"] and r["id"] not in failed
        pred = inner([r])[0] if ok else ""
        expected_samples.append({**r, "ground_truth": r.get("ground_truth", "A"), "prediction": pred})
    assert res["scores"] == pytest.approx(vsibench.score(expected_samples), abs=1e-9)
    table = res["table"]
    assert "Failed (2)" in table and "Malformed (3)" in table and "Not in any task" in table
    assert os.path.getsize(res["paths"]["chart"]) > 0
    saved = json.load(open(res["paths"]["scores"]))
    assert saved["footer"]["n_failed"] == 2 and saved["scores"] == res["scores"]


def test_samples_are_written_once_per_batch(tmp_path, monkeypatch):
    """On a bucket each write republishes the whole object: a batch's lines (and the lines of the
    records that needed no prediction before it) go out as one write, not one per sample."""
    from vlm3r_jax import storage

    data = str(tmp_path / "bench")
    make_bench(data)  # 34 records, 3 unready: a missing video, a malformed record, a bad JSON line
    recs = records_lib.load_records(data, "vsibench")
    writes, calls = [], []
    real = storage.LineLog.write
    monkeypatch.setattr(storage.LineLog, "write", lambda self, text: writes.append(text.count("\n")) or real(self, text))
    inner = noisy_oracle()
    counting = lambda batch: calls.append(len(batch)) or inner(batch)  # noqa: E731
    counting.name = "oracle"
    runner.run_eval(recs, counting, str(tmp_path / "w"), batch_size=4, progress=False, print_table=False)
    assert len(calls) == 8 and len(writes) <= len(calls) + 1  # + unready records after the last batch, if any
    assert sum(writes) == len(recs) == len(runner.read_samples(str(tmp_path / "w" / runner.SAMPLES_FILE)))


def test_unreadable_video_is_a_failure_with_open_check(tmp_path):
    data = str(tmp_path / "bench")
    make_bench(data, per_type=1, extras=False)
    with open(os.path.join(data, "scannet", "scene0000_00.mp4"), "wb") as f:
        f.write(b"not a video at all")
    recs = records_lib.load_records(data, "vsibench")
    res = runner.run_eval(
        recs, baselines.chance_predictor(0), str(tmp_path / "w"), check_videos="open", progress=False, print_table=False
    )
    bad = [r["id"] for r in recs if r["scene_name"] == "scene0000_00"]
    assert {f["id"] for f in res["footer"]["failed"]} == set(bad)
    assert all("unreadable" in f["reason"] for f in res["footer"]["failed"])


def test_chance_is_deterministic_and_batch_invariant(tmp_path):
    data = str(tmp_path / "bench")
    make_bench(data, per_type=20, extras=False, videos=False)
    recs = records_lib.load_records(data, "vsibench")
    a = runner.run_eval(
        recs, baselines.chance_predictor(3), str(tmp_path / "a"), 1, check_videos="none", progress=False, print_table=False
    )
    b = runner.run_eval(
        recs, baselines.chance_predictor(3), str(tmp_path / "b"), 7, check_videos="none", progress=False, print_table=False
    )
    assert a["scores"] == b["scores"]
    # 4 options: accuracy near 25% on MC tasks; NA cells and Avg are undefined for chance
    mc = [a["scores"][t] for t in ("object_rel_distance", "route_planning", "obj_appearance_order")]
    assert 0 < np.mean(mc) < 60
    assert a["table_row"]["object_counting"] is None and a["table_row"]["overall"] is None
    assert "| chance | – |" in a["table"]


def test_prior_predictor_and_baseline_rows(tmp_path):
    recs = [
        {"id": "1", "question_type": "route_planning", "ground_truth": "B", "options": ["A. x", "B. y"]},
        {"id": "2", "question_type": "route_planning", "ground_truth": "B", "options": ["A. x", "B. y"]},
        {"id": "3", "question_type": "route_planning", "ground_truth": "A", "options": ["A. x", "B. y"]},
        {"id": "4", "question_type": "room_size_estimation", "ground_truth": "10"},
        {"id": "5", "question_type": "room_size_estimation", "ground_truth": 20},
    ]
    prior = baselines.prior_predictor(recs, "vsibench")
    assert prior(recs) == ["B", "B", "B", "15", "15"]
    rows = {"ours": {"overall": 50.0, "route_planning": 40.0}, "chance": {"route_planning": 25.0}}
    table = report.markdown_table("vsibench", rows)
    assert table.splitlines()[0] == "| Method | Avg | RoutePlan |"
    full = report.markdown_table("vsibench", {**rows, **report.PAPER_ROWS["vsibench"]})
    assert full.splitlines()[0] == (
        "| Method | Avg | ObjCount | AbsDist | ObjSize | RoomSize | RelDist | RelDir | RoutePlan | ApprOrder |"
    )
    assert "| VLM-3R (paper) | 60.9 | 70.2 | 49.4 | 69.2 | 67.1 | 65.4 | 80.5 | 45.4 | 40.1 |" in full
    vsti_cols = [lab for _, lab in report.columns("vstibench")]
    assert vsti_cols[:7] == [
        "Avg(official)",
        "Avg(5 groups)",
        "CamObjAbsDist",
        "CamDisp",
        "CamMoveDir",
        "ObjRelPos",
        "CamObjRelDist",
    ]
    png = report.bar_chart(str(tmp_path / "c.png"), "vsibench", rows)
    assert open(png, "rb").read(4) == b"\x89PNG"


def test_zero_ground_truth_is_caught_before_inference(tmp_path):
    recs = [
        {
            "id": "1",
            "question_type": "object_counting",
            "question": "q",
            "ground_truth": "0",
            "_malformed": None,
            "video_path": None,
        }
    ]
    called = []
    with pytest.raises(ValueError, match="zero_target"):
        runner.run_eval(recs, lambda b: called.append(b) or ["0"], str(tmp_path), check_videos="none", progress=False)
    assert not called
    res = runner.run_eval(
        recs,
        lambda b: ["0"],
        str(tmp_path / "x"),
        check_videos="none",
        zero_target="exact",
        progress=False,
        print_table=False,
    )
    assert res["scores"]["object_counting"] == 100.0


def test_model_predictor_calls_the_api_contract(tmp_path, monkeypatch):
    from launch import eval as launch_eval
    from vlm3r_jax import api

    data = str(tmp_path / "bench")
    make_bench(data, per_type=1, extras=False)
    seen = []

    class FakeModel:
        def answer(self, video, question, max_new_tokens=64):
            seen.append((video, question, max_new_tokens))
            return " A. because\n"

    monkeypatch.setattr(api, "load_vlm3r", lambda path, base=None, geometry=None, **kw: FakeModel())
    from configs.eval_vsibench import get_config

    cfg = get_config()
    cfg.data_root, cfg.checkpoint, cfg.progress, cfg.batch_size = data, "/some/ckpt", False, 3
    res = launch_eval.run(cfg, str(tmp_path / "w"))
    assert len(seen) == 10 and all(m == 16 for _, _, m in seen)
    assert all(v.endswith(".mp4") and os.path.exists(v) for v, _, _ in seen)
    assert all(q.startswith("These are frames of a video.\n") for _, q, _ in seen)
    lines = runner.read_samples(res["paths"]["samples"])
    assert all(x["prediction"] == "A. because" and x["predictor"] == "VLM-3R (ours)" for x in lines.values())


@pytest.mark.parametrize("benchmark", ["vsibench", "vstibench"])
def test_launcher_cli_end_to_end(tmp_path, benchmark):
    data = str(tmp_path / "bench")
    info = make_bench(data, benchmark)
    env = {**os.environ, "PYTHONPATH": ROOT}
    base = [
        sys.executable,
        "-m",
        "launch.eval",
        f"--config={ROOT}/configs/eval_{benchmark}.py",
        f"--config.data_root={data}",
        "--config.progress=False",
    ]
    chance_dir = str(tmp_path / "chance")
    r1 = subprocess.run(
        base + [f"--workdir={chance_dir}", "--config.batch_size=2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r1.returncode == 0, r1.stderr[-3000:]
    prior_dir = str(tmp_path / "prior")
    r2 = subprocess.run(
        base
        + [
            f"--workdir={prior_dir}",
            "--config.predictor=prior",
            f"--config.baselines=chance={chance_dir}",
            "--config.chart_baseline=chance",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    for name in ("samples.jsonl", "scores.json", "table.md", "chart.png"):
        assert os.path.getsize(os.path.join(prior_dir, name)) > 0
    table = open(os.path.join(prior_dir, "table.md")).read()
    assert "| prior |" in table and "| chance |" in table and table in r2.stdout
    scores = json.load(open(os.path.join(prior_dir, "scores.json")))
    assert scores["footer"]["n_failed"] == 1 and scores["footer"]["n_malformed"] == 3
    assert scores["counts"]["_total"] == info["n_valid"] + 2
    if benchmark == "vstibench":
        assert {"overall", "paper_avg", "group:obj_obj_relative_pos"} <= set(scores["scores"])


def test_fixed_record_is_answered_on_resume_and_retry_failed(tmp_path):
    data = str(tmp_path / "bench")
    info = make_bench(data, per_type=1)
    work = str(tmp_path / "w")
    recs = records_lib.load_records(data, "vsibench")
    first = runner.run_eval(recs, noisy_oracle(), work, 4, progress=False, print_table=False)
    assert first["footer"]["n_malformed"] == 3 and first["footer"]["n_failed"] == 1
    for r in recs:  # fix the records: give the malformed one its answer, add the missing video
        if r["id"] == info["malformed"]:
            r["ground_truth"], r["_malformed"] = 5.0, None
    _write_mp4(os.path.join(data, "scannet", "scene9999_00.mp4"))
    seen = []
    inner = noisy_oracle()

    def counting(batch):
        seen.extend(r["id"] for r in batch)
        return inner(batch)

    counting.name = getattr(inner, "name", "model")  # the same predictor, or resuming starts over
    second = runner.run_eval(recs, counting, work, 4, retry_failed=True, progress=False, print_table=False)
    assert sorted(seen) == sorted([info["malformed"], info["missing"]])
    assert second["footer"]["n_failed"] == 0 and second["footer"]["n_malformed"] == 2


def test_resume_with_another_predictor_or_checkpoint_starts_over(tmp_path):
    """Reusing answers of another predictor, or of an earlier state of the same checkpoint, would
    label stale predictions with this run's name."""
    data = str(tmp_path / "bench")
    make_bench(data, per_type=1)
    work = str(tmp_path / "w")
    recs = records_lib.load_records(data, "vsibench")
    runner.run_eval(recs, noisy_oracle(), work, 4, progress=False, print_table=False, identity={"weights": "a"})
    seen = []

    def chance(batch):
        seen.extend(r["id"] for r in batch)
        return ["A"] * len(batch)

    chance.name = "chance"
    runner.run_eval(recs, chance, str(tmp_path / "fresh"), 4, progress=False, print_table=False)
    asked = sorted(seen)  # all but the records that fail before prediction (bad ones in make_bench)
    seen.clear()
    runner.run_eval(recs, chance, work, 4, progress=False, print_table=False)
    assert sorted(seen) == asked and os.path.exists(os.path.join(work, "samples.jsonl.stale"))
    seen.clear()
    runner.run_eval(recs, chance, work, 4, progress=False, print_table=False)  # same run: resumes
    assert seen == []
    runner.run_eval(recs, chance, work, 4, progress=False, print_table=False, identity={"weights": "b"})
    assert sorted(seen) == asked


def test_launcher_resumes_its_own_run(tmp_path):
    from configs import eval_vsibench
    from launch import eval as eval_launcher

    data = str(tmp_path / "bench")
    make_bench(data, per_type=1)
    cfg = eval_vsibench.get_config()
    cfg.data_root, cfg.predictor, cfg.progress, cfg.include_paper_row = data, "", False, False  # "": chance
    work = str(tmp_path / "w")
    eval_launcher.run(cfg, work)
    eval_launcher.run(cfg, work)  # the same run: resumes, nothing is redone
    assert not os.path.exists(os.path.join(work, "samples.jsonl.stale"))
    cfg.seed = 1
    eval_launcher.run(cfg, work)  # other answers: starts over
    assert os.path.exists(os.path.join(work, "samples.jsonl.stale"))
