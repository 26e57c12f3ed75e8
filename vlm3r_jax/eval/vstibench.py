"""VSTI-Bench scorer (VLM-3R), per the contract ``vstibench.score(samples) -> dict``.

Official rules (VLM-3R ``thinking-in-space/lmms_eval/tasks/vstibench/utils.py``): the same
extraction and metrics as VSI-Bench; MC types compare with the record's ``mc_answer`` (a letter;
``ground_truth`` holds the option text there); NA types take MRA against ``ground_truth``;
``overall`` = plain mean over every question type present (up to 10; v1/v2/v3 and nf/ud/lr are
NOT merged), ×100.

The paper reports 5 task families instead. We add that view as ``group:<family>`` keys (each the
mean of its sub-types present: our choice, the paper gives no code) and ``paper_avg`` (mean of the
families present). ``camera_obj_dist_change`` belongs to no family and is left out of ``paper_avg``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vlm3r_jax.eval import metrics, tasks

BENCHMARK = "vstibench"
SUBTYPES = tasks.VSTI_SUBTYPES
GROUPS = tasks.VSTI_GROUPS


NEEDS = "question_type, ground_truth, prediction and, for multiple-choice types, mc_answer"


def _field(sample: Mapping[str, Any], key: str, index: int) -> Any:
    return metrics.required_field(sample, key, index, BENCHMARK, NEEDS)


def answer_of(sample: Mapping[str, Any], index: int = 0) -> Any:
    """``mc_answer`` for MC types, ``ground_truth`` for NA types."""
    qt = _field(sample, "question_type", index)
    return _field(sample, "mc_answer" if tasks.is_multiple_choice(qt, BENCHMARK) else "ground_truth", index)


def score_sample(sample: Mapping[str, Any], zero_target: str = "raise", index: int = 0,
                 rules: str = "paper") -> dict[str, Any]:
    """Scores one sample. Returns ``{"question_type", "task", "parsed", "score" (0..1), "metric",
    "parsable"}``. A missing/None prediction (a failed sample) scores 0. ``rules``: only "paper"
    (VLM-3R's own scorer; lmms-eval 0.7 ships no VSTI-Bench task to follow)."""
    if rules != "paper":
        raise ValueError(f"vstibench has only the 'paper' rule set (VLM-3R's scorer), got rules={rules!r}")
    qt = _field(sample, "question_type", index)
    prediction = _field(sample, "prediction", index)
    out = metrics.score_prediction(prediction, answer_of(sample, index), tasks.is_multiple_choice(qt, BENCHMARK),
                                   zero_target, sample.get("id", index))
    out.update(question_type=qt, task=qt)
    return out


def aggregate(type_scores: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Percent scores from ``(question_type, per-sample score in [0, 1])`` pairs."""
    per_type, _ = metrics.group_means(type_scores)
    if not per_type:
        raise ValueError("no samples to score")
    out = {"overall": sum(per_type.values()) / len(per_type) * 100.0}
    for qt in SUBTYPES:
        if qt in per_type:
            out[qt] = per_type[qt] * 100.0
    groups = {}
    for name, members in GROUPS.items():
        present = [per_type[m] for m in members if m in per_type]
        if present:
            groups[name] = sum(present) / len(present)
    if groups:
        out["paper_avg"] = sum(groups.values()) / len(groups) * 100.0
        for name, value in groups.items():
            out[f"group:{name}"] = value * 100.0
    return out


def score_details(
    samples: Iterable[Mapping[str, Any]], zero_target: str = "raise"
) -> tuple[dict[str, float], list[dict]]:
    """(percent scores, per-sample results in input order)."""
    per_sample = [score_sample(s, zero_target, i) for i, s in enumerate(samples)]
    return aggregate((r["question_type"], r["score"]) for r in per_sample), per_sample


def score(samples: Iterable[Mapping[str, Any]], zero_target: str = "raise") -> dict[str, float]:
    """``samples``: dicts with ``question_type``, ``ground_truth``, ``prediction`` (decoded model
    text) and ``mc_answer`` for MC types. Returns percent scores: ``overall`` (official), one key
    per sub-type present, ``paper_avg`` and ``group:<family>`` (the paper's 5-task view)."""
    return score_details(samples, zero_target)[0]


def question_type_counts(samples: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Number of samples per question type."""
    counts: dict[str, int] = {}
    for s in samples:
        counts[s["question_type"]] = counts.get(s["question_type"], 0) + 1
    return counts
