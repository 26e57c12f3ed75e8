"""VSI-Bench scorer (thinking-in-space), per the contract ``vsibench.score(samples) -> dict``.

Aggregation as in the official ``vsibench_aggregate_results``: mean score per question_type; the
three relative-direction difficulties (easy/medium/hard) are averaged into one
``object_rel_direction`` task; ``overall`` = plain mean of the task scores present (8 on the full
benchmark); everything ×100. Upstream folds rel-direction only when the "easy" type is present
(and then requires all three); we average whichever are present, as VLM-3R's copy of the scorer
does. Both agree on any set that has all three.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vlm3r_jax.eval import metrics, tasks

BENCHMARK = "vsibench"
TASKS = tasks.VSI_TASKS


NEEDS = "question_type, ground_truth and prediction"


def _field(sample: Mapping[str, Any], key: str, index: int) -> Any:
    return metrics.required_field(sample, key, index, BENCHMARK, NEEDS)


def answer_of(sample: Mapping[str, Any], index: int = 0) -> Any:
    """The reference an MC/NA prediction is compared with: ``ground_truth`` (a letter for MC)."""
    return _field(sample, "ground_truth", index)


def score_sample(sample: Mapping[str, Any], zero_target: str = "raise", index: int = 0,
                 rules: str = "paper") -> dict[str, Any]:
    """Scores one sample under ``rules`` ("paper" | "lmms-eval", :data:`metrics.RULE_SETS`).
    Returns ``{"question_type", "task", "parsed", "score" (0..1), "metric", "parsable"}``. A
    missing/None prediction (a failed sample) scores 0."""
    qt = _field(sample, "question_type", index)
    prediction = _field(sample, "prediction", index)
    out = metrics.score_prediction(prediction, answer_of(sample, index), tasks.is_multiple_choice(qt, BENCHMARK),
                                   zero_target, sample.get("id", index), rules)
    out.update(question_type=qt, task=tasks.task_of(qt, BENCHMARK))
    return out


def aggregate(type_scores: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Percent scores from ``(question_type, per-sample score in [0, 1])`` pairs."""
    per_type, _ = metrics.group_means(type_scores)
    folded: dict[str, float] = {}
    rel_dir = [per_type[t] for t in tasks.VSI_REL_DIRECTION_TYPES if t in per_type]
    for qt, value in per_type.items():
        if qt not in tasks.VSI_REL_DIRECTION_TYPES:
            folded[qt] = value
    if rel_dir:
        folded[tasks.VSI_REL_DIRECTION_TASK] = sum(rel_dir) / len(rel_dir)
    if not folded:
        raise ValueError("no samples to score")
    out = {"overall": sum(folded.values()) / len(folded) * 100.0}
    for task in TASKS:
        if task in folded:
            out[task] = folded[task] * 100.0
    return out


def score_details(
    samples: Iterable[Mapping[str, Any]], zero_target: str = "raise", rules: str = "paper"
) -> tuple[dict[str, float], list[dict]]:
    """(percent scores, per-sample results in input order)."""
    per_sample = [score_sample(s, zero_target, i, rules) for i, s in enumerate(samples)]
    return aggregate((r["question_type"], r["score"]) for r in per_sample), per_sample


def score(samples: Iterable[Mapping[str, Any]], zero_target: str = "raise", rules: str = "paper") -> dict[str, float]:
    """``samples``: dicts with ``question_type``, ``ground_truth``, ``prediction`` (decoded model text).
    Returns percent scores ``{"overall": .., "object_counting": .., ...}`` (tasks present only,
    paper order). Unknown question types raise ValueError, as upstream. ``rules``: "paper" (the
    paper's table, thinking-in-space) or "lmms-eval" (lmms-eval 0.7: first number anywhere in a
    numeric answer, number words included)."""
    return score_details(samples, zero_target, rules)[0]


def question_type_counts(samples: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Number of samples per table task."""
    counts: dict[str, int] = {}
    for s in samples:
        task = tasks.task_of(s["question_type"], BENCHMARK)
        counts[task] = counts.get(task, 0) + 1
    return counts
