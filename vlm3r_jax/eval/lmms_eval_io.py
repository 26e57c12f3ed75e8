"""lmms-eval interop for VSI-Bench: results and per-sample logs in lmms-eval 0.7's shapes, and the
samples an lmms-eval ``--log_samples`` run wrote, read back for our scorer.

| file (under ``WORKDIR/lmms_eval/``) | lmms-eval counterpart | content |
|---|---|---|
| ``results.json`` | ``<output_path>/<model>/<time>_results.json`` | ``results.vsibench["<metric>,none"]``, fractions rounded to 6 places, lmms-eval 0.7 metric names, scored with ``rules="lmms-eval"`` |
| ``samples_vsibench.jsonl`` | ``<time>_samples_vsibench.jsonl`` | one line per record: ``doc_id``, ``doc``, ``target``, ``resps``, ``filtered_resps`` and each metric key holding the scored doc |

:func:`read_log_samples` accepts such a file (ours or lmms-eval's) and returns samples for
``vsibench.score``: ``id``, ``question_type``, ``ground_truth``, ``prediction``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from vlm3r_jax import storage
from vlm3r_jax.eval import tasks, vsibench

# our task key -> lmms-eval 0.7's aggregate metric name (lmms_eval/tasks/vsibench/utils.py)
VSI_METRICS = {
    "overall": "vsibench_overall",
    "obj_appearance_order": "obj_appearance_order_accuracy",
    "object_abs_distance": "object_abs_distance_mra",
    "object_counting": "object_counting_mra",
    "object_rel_distance": "object_rel_distance_accuracy",
    "object_size_estimation": "object_size_estimation_mra",
    "room_size_estimation": "room_size_estimation_mra",
    "route_planning": "route_planning_accuracy",
    "object_rel_direction": "object_rel_direction_accuracy",
}
_DOC_FIELDS = ("id", "dataset", "scene_name", "question", "question_type", "options", "ground_truth")


def results_json(scores: Mapping[str, float], predictor: str, n_samples: int) -> dict[str, Any]:
    """Our percent ``scores`` -> lmms-eval's results layout (fractions, ``"<metric>,none"``)."""
    res: dict[str, Any] = {"alias": "vsibench"}
    for key, metric in VSI_METRICS.items():
        if key in scores:
            res[f"{metric},none"] = round(scores[key] / 100.0, 6)
    return {"results": {"vsibench": res}, "n-samples": {"vsibench": {"original": n_samples, "effective": n_samples}},
            "config": {"model": "vlm3r_jax", "model_args": predictor, "scoring_rules": "lmms-eval"}}


def sample_lines(records: Sequence[Mapping[str, Any]], predictions: Mapping[str, str],
                 zero_target: str = "raise") -> tuple[list[dict[str, Any]], dict[str, float]]:
    """(lmms-eval-shaped sample log lines, percent scores under ``rules="lmms-eval"``) for the
    records (record order; a record without a prediction answers "")."""
    samples = [{**r, "prediction": predictions.get(str(r["id"]), "") or ""} for r in records]
    scores, per_sample = vsibench.score_details(samples, zero_target, rules="lmms-eval")
    lines = []
    for i, (s, res) in enumerate(zip(samples, per_sample, strict=True)):
        doc = {k: s[k] for k in _DOC_FIELDS if k in s}
        metric = "accuracy" if tasks.is_multiple_choice(s["question_type"], "vsibench") else "MRA:.5:.95:.05"
        scored = {**doc, "prediction": s["prediction"], metric: res["score"]}
        line = {"doc_id": i, "doc": doc, "target": s.get("ground_truth"), "resps": [[s["prediction"]]],
                "filtered_resps": [s["prediction"]]}
        line.update({m: scored for m in VSI_METRICS.values()})
        lines.append(line)
    return lines, scores


def write(workdir: str, records: Sequence[Mapping[str, Any]], predictions: Mapping[str, str], predictor: str,
          zero_target: str = "raise") -> dict[str, str]:
    """Writes ``WORKDIR/lmms_eval/{results.json, samples_vsibench.jsonl}``; returns their paths."""
    lines, scores = sample_lines(records, predictions, zero_target)
    out = storage.join(workdir, "lmms_eval")
    paths = {"results": storage.join(out, "results.json"), "samples": storage.join(out, "samples_vsibench.jsonl")}
    storage.makedirs(out)
    storage.write_atomic(paths["samples"], "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    storage.write_atomic(paths["results"], json.dumps(results_json(scores, predictor, len(lines)), indent=2) + "\n")
    return paths


def read_log_samples(path: str) -> list[dict[str, Any]]:
    """An lmms-eval ``--log_samples`` VSI-Bench file (JSONL, or a JSON list) -> samples for
    :func:`vlm3r_jax.eval.vsibench.score`. The prediction is the scored doc's ``prediction``
    (lmms-eval 0.7 keys ``vsibench_overall``, thinking-in-space ``vsibench_score``), else the first
    ``filtered_resps``."""
    text = storage.read_text(path)
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not an lmms-eval samples file (line JSON: {e.msg})") from None
    out = []
    for i, row in enumerate(rows):
        doc = next((row[k] for k in ("vsibench_overall", "vsibench_score") if isinstance(row.get(k), dict)),
                   row.get("doc") or {})
        pred = doc.get("prediction")
        if pred is None:
            resps = row.get("filtered_resps") or [""]
            pred = resps[0][0] if isinstance(resps[0], list) else resps[0]
        if "question_type" not in doc or "ground_truth" not in doc:
            raise ValueError(f"{path}: sample {i} has no question_type/ground_truth in its doc; "
                             "was it written by the vsibench task with --log_samples?")
        out.append({"id": doc.get("id", row.get("doc_id", i)), "question_type": doc["question_type"],
                    "ground_truth": doc["ground_truth"], "prediction": pred})
    return out
