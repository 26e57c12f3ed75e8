"""The lmms-eval adapter (``--model vlm3r_jax``, vlm3r_jax/lmms_eval/): lmms-eval's own command line
answers VSI-Bench questions on a tiny released-layout model, offline, from a tiny local dataset in
the VSI-Bench format, and gives the same answers and the same scores as ``launch.eval`` with
``rules="lmms-eval"``. Skipped without lmms-eval (the ``test`` extra installs it)."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

if importlib.util.find_spec("lmms_eval") is None:
    pytest.skip("lmms-eval is not installed (pip install -e '.[test]')", allow_module_level=True)

from test_eval_runner import make_bench  # noqa: E402

from vlm3r_jax.eval import lmms_eval_io  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TASK = "vsibench_tiny"
NUM_FRAMES, BATCH = 4, 4


def _task_yaml(path: str, records: str) -> None:
    """lmms-eval's own VSI-Bench task (prompts, generation settings, scoring), reading ``records``
    from disk instead of the Hub. Videos are found under ``$HF_HOME/vsibench`` as upstream."""
    spec = importlib.util.find_spec("lmms_eval")
    template = os.path.join(spec.submodule_search_locations[0], "tasks", "vsibench", "_default_template_yaml")
    with open(path, "w") as f:
        f.write(f"task: {TASK}\ninclude: {template}\ndataset_path: json\ntest_split: test\n"
                f"dataset_kwargs:\n  data_files:\n    test: {records}\n  video: true\n  cache_dir: vsibench\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(tmp, the tiny model, its released-layout export, HF_HOME, benchmark dir)."""
    import _vlm3r_helpers as H

    tmp = tmp_path_factory.mktemp("lmms")
    model = H.small_model(str(tmp), num_frames=NUM_FRAMES, lora_rank=2)
    paths = model.export(str(tmp / "release"))
    hf_home = str(tmp / "hf")
    bench = os.path.join(hf_home, "vsibench")  # lmms-eval's vsibench reads $HF_HOME/vsibench/<dataset>/<scene>.mp4
    make_bench(bench, per_type=1, extras=False)
    records = os.path.join(bench, "test.jsonl")
    with open(records) as f:  # the Hub's VSI-Bench stores every ground truth as a string
        rows = [{**r, "ground_truth": str(r["ground_truth"])} for r in map(json.loads, f)]
    with open(records, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.makedirs(tmp / "tasks")
    _task_yaml(str(tmp / "tasks" / f"{TASK}.yaml"), records)
    return tmp, model, paths, hf_home, bench


def _run_lmms_eval(tmp, paths, hf_home) -> tuple[dict, dict]:
    """``python -m lmms_eval --model vlm3r_jax ...`` (found through setup.py's ``lmms_eval.models`` entry
    point, no environment variable) on one CPU device -> (its results for the task, {record id: answer} from its ``--log_samples`` file)."""
    model_args = (f"pretrained={paths['lora']},model_base={paths['base']},geometry={paths['geometry']},"
                  f"conv_template=qwen_1_5,max_frames_num={NUM_FRAMES}")
    out = tmp / "lmms_out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "vlm3r_jax", "--model_args", model_args, "--tasks", TASK,
           "--include_path", str(tmp / "tasks"), "--batch_size", str(BATCH), "--output_path", str(out), "--log_samples"]
    # one CPU device: lmms-eval runs one process; an XLA_FLAGS of only spaces would be read as a file name
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")).strip()
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "HF_HOME": hf_home, "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ROOT,
           "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    if not flags:
        del env["XLA_FLAGS"]
    r = subprocess.run(cmd, cwd=str(tmp), env=env, capture_output=True, text=True, timeout=600)
    results = glob.glob(str(out / "**" / "*_results.json"), recursive=True)
    samples = glob.glob(str(out / "**" / f"*_samples_{TASK}.jsonl"), recursive=True)
    # lmms-eval logs an error and still exits 0: its files tell whether it ran
    assert r.returncode == 0 and len(results) == len(samples) == 1, r.stderr[-4000:]
    with open(results[0]) as f:
        scores = json.load(f)["results"][TASK]
    return scores, {str(s["id"]): s["prediction"] for s in lmms_eval_io.read_log_samples(samples[0])}


def test_lmms_eval_answers_and_scores_as_our_eval(setup):
    """Through lmms-eval: its prompt text, its frames-to-answer loop, its scorer. Ours: our prompt
    builder, the model handle's batched ``answer_batch`` (another decode path than the adapter's
    sharded predictor), our ``rules="lmms-eval"`` scorer. The random tiny model's answers score 0;
    tests/test_vsibench_rules.py checks the two scorers agree on scorable answers."""
    from vlm3r_jax.eval import prompts
    from vlm3r_jax.eval import records as records_lib
    from vlm3r_jax.lmms_eval.models.vlm3r_jax import cut_at_stops

    tmp, model, paths, hf_home, bench = setup
    lmms_scores, lmms_answers = _run_lmms_eval(tmp, paths, hf_home)

    recs = records_lib.load_records(bench, "vsibench")
    texts = model.answer_batch([r["video_path"] for r in recs], [prompts.build_question(r) for r in recs],
                               max_new_tokens=16, num_frames=NUM_FRAMES)
    # lmms-eval's default stop string for this task is "\n\n"
    ours = {str(r["id"]): cut_at_stops(t, ("\n\n",)) for r, t in zip(recs, texts, strict=True)}
    assert len(ours) == 10 and lmms_answers == ours
    _, scores = lmms_eval_io.sample_lines(recs, ours)
    our_scores = lmms_eval_io.results_json(scores, "ours", len(recs))["results"]["vsibench"]
    metrics = [k for k in lmms_scores if k.endswith(",none") and "stderr" not in k]
    assert "vsibench_overall,none" in metrics
    assert {k: lmms_scores[k] for k in metrics} == {k: our_scores[k] for k in metrics}


def test_entry_point_names_the_adapter():
    """The installed route (setup.py's ``lmms_eval.models`` entry point) resolves to the same class
    through lmms-eval's registry, which also checks it is a simple ``lmms`` model."""
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from vlm3r_jax.lmms_eval.manifest import MANIFEST
    from vlm3r_jax.lmms_eval.models import AVAILABLE_MODELS
    from vlm3r_jax.lmms_eval.models.vlm3r_jax import VLM3RJax

    with open(os.path.join(ROOT, "setup.py")) as f:
        module, attr = re.search(r'"vlm3r_jax = ([\w.]+):(\w+)"', f.read()).groups()
    assert getattr(importlib.import_module(module), attr) is MANIFEST
    registry = ModelRegistryV2()
    registry.register_manifest(MANIFEST)
    assert registry.get_model_class("vlm3r_jax") is VLM3RJax
    assert AVAILABLE_MODELS == {"vlm3r_jax": VLM3RJax.__name__}


def test_bad_model_args_and_generation_settings():
    from vlm3r_jax.lmms_eval.models.vlm3r_jax import VLM3RJax, _greedy_settings, cut_at_stops

    with pytest.raises(TypeError, match=r"unknown model_args \['frames'\]"):
        VLM3RJax(pretrained="x", frames=8)
    with pytest.raises(ValueError, match="pretrained="):
        VLM3RJax()
    with pytest.raises(ValueError, match="only 'qwen_1_5'"):
        VLM3RJax(pretrained="x", conv_template="vicuna_v1")
    with pytest.raises(ValueError, match="greedily only"):
        _greedy_settings({"temperature": 0.7}, "t/s/0")
    with pytest.raises(ValueError, match="greedily only"):
        _greedy_settings({"num_beams": 4}, "t/s/0")
    assert _greedy_settings({"max_new_tokens": 16, "temperature": 0, "until": "\n\n"}, "") == (16, ("\n\n",))
    assert _greedy_settings({}, "")[0] == 1024
    assert cut_at_stops(" 3.2 m\n\nmore", ("\n\n",)) == "3.2 m"
    with pytest.raises(NotImplementedError, match="loglikelihood"):
        VLM3RJax.loglikelihood(None, [])


def test_repeated_requests_each_get_their_answer():
    """``--repeats K`` hands the same Instance (one task/split/doc_id) K times in one batch: every
    copy gets the answer of its own row, and a video that fails answers "" for its copy only."""
    from vlm3r_jax.lmms_eval.models.vlm3r_jax import VLM3RJax, _Job

    class Predictor:
        def prepare(self, rec):
            if rec["video_path"] == "bad.mp4":
                raise ValueError("cannot decode")
            return {"id": rec["id"], "video_path": rec["video_path"]}

        def __call__(self, ready, max_new_tokens):
            return [f"answer {i}" for i in range(len(ready))]

    adapter = object.__new__(VLM3RJax)
    adapter.predictor = Predictor()
    jobs = [_Job(i, "q", {}, video, "vsibench/test/7", 16, ()) for i, video in
            enumerate(["a.mp4", "a.mp4", "bad.mp4", "a.mp4"])]
    assert adapter._answer(jobs, 16) == ["answer 0", "answer 1", "", "answer 2"]
