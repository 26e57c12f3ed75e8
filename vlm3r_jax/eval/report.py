"""Result files and tables: per-task JSON, a Markdown/console table in the paper's column order
with optional baseline rows and a failure footer, and a bar chart against one baseline row.

The per-sample JSONL is written by :mod:`vlm3r_jax.eval.runner` (it appends line by line).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from vlm3r_jax import storage
from vlm3r_jax.eval import tasks

# Reported numbers (docs: /work/shared/design/REFERENCE_VLM3R.md section 6).
PAPER_ROWS: dict[str, dict[str, dict[str, float]]] = {
    "vsibench": {
        # VLM-3R (7B) as in the paper's VSI-Bench table (values repeated in VITA-Group/VLM-3R issue #43).
        "VLM-3R (paper)": {
            "overall": 60.9,
            "object_counting": 70.2,
            "object_abs_distance": 49.4,
            "object_size_estimation": 69.2,
            "room_size_estimation": 67.1,
            "object_rel_distance": 65.4,
            "object_rel_direction": 80.5,
            "route_planning": 45.4,
            "obj_appearance_order": 40.1,
        },
    },
    "vstibench": {
        # Low confidence: not checked against the arXiv table (REFERENCE_VLM3R.md marks them unverified).
        "VLM-3R (paper, unverified)": {
            "paper_avg": 58.8,
            "group:camera_obj_abs_dist": 39.4,
            "group:camera_displacement": 39.6,
            "group:camera_movement_direction": 60.6,
            "group:obj_obj_relative_pos": 86.5,
            "group:camera_obj_rel_dist": 68.6,
        },
    },
}


def columns(benchmark: str) -> list[tuple[str, str]]:
    """(score key, column label) in the paper's order."""
    if tasks.check_benchmark(benchmark) == "vsibench":
        return [(k, tasks.VSI_SHORT[k]) for k in ("overall",) + tasks.VSI_TASKS]
    keys = ["overall", "paper_avg"] + [f"group:{g}" for g in tasks.VSTI_GROUPS] + list(tasks.VSTI_SUBTYPES)
    return [(k, tasks.VSTI_SHORT[k]) for k in keys]


def na_score_keys(benchmark: str) -> set[str]:
    """Score keys of numerical tasks (a chance baseline has no value there)."""
    keys = set(tasks.na_types(benchmark))
    if benchmark == "vstibench":
        keys |= {f"group:{g}" for g, members in tasks.VSTI_GROUPS.items() if all(m in keys for m in members)}
    return keys


def _cell(value: Any) -> str:
    return "–" if value is None else f"{float(value):.1f}"


def markdown_table(
    benchmark: str,
    rows: Mapping[str, Mapping[str, float | None]],
    footer: Mapping[str, Any] | None = None,
    counts: Mapping[str, int] | None = None,
    max_listed: int = 10,
) -> str:
    """A Markdown table (also fine on a console): one row per named score dict, columns in paper
    order (columns no row has are dropped), an ``n`` row with sample counts, then the footer."""
    cols = [(k, lab) for k, lab in columns(benchmark) if any(r.get(k) is not None for r in rows.values())]
    lines = ["| Method | " + " | ".join(lab for _, lab in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, scores in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(scores.get(k)) for k, _ in cols) + " |")
    if counts:
        lines.append("| n | " + " | ".join(_count_cell(k, counts) for k, _ in cols) + " |")
    if footer:
        lines.append("")
        lines.extend(footer_lines(footer, max_listed))
    return "\n".join(lines) + "\n"


RULES_DOC = {
    "paper": "paper (thinking-in-space: first word as a float, else 0; the paper's table)",
    "lmms-eval": "lmms-eval (0.7: first number anywhere in a numeric answer, number words included)",
}


def rules_line(rules: str) -> str:
    """The line each table carries to say how numeric answers were read (the reference rows of the
    paper used "paper")."""
    return f"Scoring rules: {RULES_DOC.get(rules, rules)}."


def _count_cell(key: str, counts: Mapping[str, int]) -> str:
    if key == "overall":
        return str(counts.get("_total", ""))
    if key == "paper_avg":
        return str(sum(counts.get(m, 0) for members in tasks.VSTI_GROUPS.values() for m in members))
    if key.startswith("group:"):
        return str(sum(counts.get(m, 0) for m in tasks.VSTI_GROUPS[key[len("group:") :]]))
    return str(counts.get(key, ""))


def footer_lines(footer: Mapping[str, Any], max_listed: int = 10) -> list[str]:
    """Human-readable footer: totals, failed and malformed samples (they score 0 and stay in the
    denominator), unparsable predictions, records that could not be attributed to any task."""
    out = [
        f"Samples: {footer.get('total', 0)} scored in the table; "
        f"{footer.get('n_failed', 0)} failed (video missing/unreadable or predictor error) and "
        f"{footer.get('n_malformed', 0)} malformed records count as 0 in the denominators; "
        f"{footer.get('n_unparsable', 0)} predictions were unparsable (scored 0 by the official rules)."
    ]
    for key, label in (
        ("failed", "Failed"),
        ("malformed", "Malformed"),
        ("unattributed", "Not in any task (unknown question_type)"),
    ):
        items = footer.get(key) or []
        if items:
            shown = "; ".join(f"{it['id']}: {it['reason']}" for it in items[:max_listed])
            more = f"; ... (+{len(items) - max_listed} more, see scores.json)" if len(items) > max_listed else ""
            out.append(f"{label} ({len(items)}): {shown}{more}")
    if footer.get("n_unattributed"):
        out.append(
            "Warning: records with an unknown question_type cannot enter any task mean; fix the records file "
            "(the official scorer raises ValueError on them)."
        )
    return out


def write_json(path: str, obj: Any) -> None:
    storage.write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def load_scores(path_or_workdir: str) -> dict[str, float]:
    """The ``scores`` dict of a ``scores.json`` (given the file or the workdir holding it)."""
    path = path_or_workdir
    if os.path.isdir(path) or (storage.is_uri(path) and not path.endswith(".json")):
        path = storage.join(path, "scores.json")
    data = json.loads(storage.read_text(path))
    # A run's table row hides what its predictor does not define (chance on numerical tasks).
    for key in ("table_row", "scores"):
        if isinstance(data.get(key), dict):
            return dict(data[key])
    return dict(data)


def parse_baselines(spec: str | Mapping[str, str] | None) -> dict[str, dict[str, float]]:
    """Baseline rows from ``"name=workdir_or_scores.json,name2=..."`` (or a dict of the same)."""
    if not spec:
        return {}
    items = spec.items() if isinstance(spec, Mapping) else (p.split("=", 1) for p in str(spec).split(",") if p.strip())
    rows = {}
    for item in items:
        name, path = item if len(item) == 2 else (None, None)
        if name is None:
            raise ValueError(f"baseline spec {spec!r}: expected name=path[,name=path]")
        rows[name.strip()] = load_scores(path.strip())
    return rows


def bar_chart(
    path: str,
    benchmark: str,
    rows: Mapping[str, Mapping[str, float | None]],
    title: str | None = None,
    keys: Sequence[str] | None = None,
) -> str:
    """Grouped bar chart (PNG) of per-task scores, one bar colour per row (e.g. the run and the
    chosen baseline). Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = [(k, lab) for k, lab in columns(benchmark) if keys is None or k in keys]
    cols = [(k, lab) for k, lab in cols if any(r.get(k) is not None for r in rows.values())]
    x = np.arange(len(cols))
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(cols) + 2), 4))
    for i, (name, scores) in enumerate(rows.items()):
        vals = [scores.get(k) for k, _ in cols]
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, [0.0 if v is None else v for v in vals], width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels([lab for _, lab in cols], rotation=30, ha="right")
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or benchmark)
    ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format=os.path.splitext(path)[1][1:] or "png")
    storage.write_atomic(path, buf.getvalue())
    plt.close(fig)
    return path
