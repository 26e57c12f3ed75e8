"""Model-independent evaluation loop: ``run_eval(records, predict_fn, workdir, ...)``.

``predict_fn(batch) -> list[str]`` gets a list of normalized records (see
:mod:`vlm3r_jax.eval.records`), each with ``prompt`` (the official question text) and
``video_path`` added, and returns one decoded answer per record. The loop

* appends one JSON line per sample to ``<workdir>/samples.jsonl`` (a single ``write`` on an
  O_APPEND descriptor, then fsync), so a crash loses at most the batch in flight;
* on restart skips every id already there (a torn last line from a crash is cut off first);
* counts records whose video is missing/unreadable, whose prediction raised, or that are malformed
  as failures: they score 0 and stay in every denominator, and the table footer lists them;
* recomputes all scores from the JSONL at the end (so a resumed run and an uninterrupted one give
  the same table), then writes ``scores.json``, ``table.md`` and ``chart.png``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vlm3r_jax import storage
from vlm3r_jax.eval import lmms_eval_io, metrics, report, tasks
from vlm3r_jax.eval.dataset import Pending, eval_dataset, eval_iterator  # noqa: F401 - eval_dataset: public here too
from vlm3r_jax.eval.scorers import SCORERS
from vlm3r_jax.eval.store import IDENTITY_FILE, Appender, NullAppender, read_samples, stale_reason

log = logging.getLogger(__name__)

PredictFn = Callable[[list[dict[str, Any]]], list[str]]
SAMPLES_FILE, SCORES_FILE, TABLE_FILE, CHART_FILE = "samples.jsonl", "scores.json", "table.md", "chart.png"


# --------------------------------------------------------------------------------------------
# The loop.
# --------------------------------------------------------------------------------------------
def _line(
    rec: Mapping[str, Any],
    benchmark: str,
    prediction: str,
    status: str,
    error: str | None,
    zero_target: str,
    predictor: str,
    rules: str = "paper",
) -> dict:
    line = {
        "id": rec["id"],
        "question_type": rec.get("question_type"),
        "task": None,
        "ground_truth": rec.get("ground_truth"),
        "prediction": prediction,
        "parsed": None,
        "score": 0.0,
        "metric": None,
        "status": status,
        "error": error,
        "predictor": predictor,
    }
    if "mc_answer" in rec:
        line["mc_answer"] = rec["mc_answer"]
    if not rec.get("_malformed"):
        res = SCORERS[benchmark].score_sample({**rec, "prediction": prediction}, zero_target, rules=rules)
        line.update(
            task=res["task"], parsed=res["parsed"], score=res["score"], metric=res["metric"], parsable=res["parsable"]
        )
    return line


def _check_zero_targets(records: Sequence[Mapping[str, Any]], benchmark: str) -> None:
    bad = [
        r["id"]
        for r in records
        if not r.get("_malformed")
        and r["question_type"] in tasks.na_types(benchmark)
        and metrics.to_float(r["ground_truth"]) == 0.0
    ]
    if bad:
        raise ValueError(
            f"{len(bad)} numerical records have ground_truth 0 (ids {bad[:10]}): relative accuracy is undefined and "
            "the official scorer crashes on them. Fix the records or set zero_target='exact' (config.zero_target)."
        )


def run_eval(
    records: Sequence[Mapping[str, Any]],
    predict_fn: PredictFn,
    workdir: str,
    batch_size: int = 1,
    benchmark: str = "vsibench",
    *,
    predictor_name: str | None = None,
    check_videos: str = "exists",
    zero_target: str = "raise",
    rules: str = "paper",
    prompt_kwargs: Mapping[str, str] | None = None,
    baselines: Mapping[str, Mapping[str, float]] | None = None,
    include_paper_row: bool = True,
    chart_baseline: str | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    fsync: bool = True,
    print_table: bool = True,
    writer: bool = True,
    worker_count: int = 0,
    identity: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Runs ``predict_fn`` over ``records`` (normalized, see :func:`records.load_records`) in batches,
    resumably, and writes ``samples.jsonl``, ``scores.json``, ``table.md`` and ``chart.png`` under
    ``workdir``. Returns ``{"scores", "table_row", "counts", "footer", "table", "paths"}``.

    ``baselines``: extra table rows {name: scores}; ``chart_baseline``: the row (a baseline name or
    the paper row's name) drawn next to this run in the chart.

    Multi-host SPMD: call it on every process with the same records and a shared ``workdir`` and
    ``writer=(jax.process_index() == 0)``; all processes then run the same batches (the resume set
    is read before anything is written) and only the writer writes files (others return None).

    The records are streamed through a Grain dataset (:func:`eval_dataset`): finished ids are
    filtered out, prompts built, videos checked and, when ``predict_fn`` has a picklable
    ``prepare(record) -> record`` attribute (video decode + tokenization of a model predictor),
    that runs there too, in ``worker_count`` Grain worker processes when > 0.
    """
    tasks.check_benchmark(benchmark)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; must be >= 1")
    metrics.score_numeric("0", 1, zero_target, rules=rules)  # validates the policy and rule names early
    predictor_name = predictor_name or getattr(predict_fn, "name", "model")
    ids = [str(r["id"]) for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError("records have duplicate ids; resuming keys on ids, make them unique")
    if zero_target == "raise":
        _check_zero_targets(records, benchmark)
    storage.makedirs(workdir)  # a path or a URI (gs://...)
    samples_path = os.path.join(workdir, SAMPLES_FILE)
    done = read_samples(samples_path, repair=writer)  # only the writer may cut a torn line
    # as it reads back from the file (tuples become lists), so equal runs compare equal
    identity = json.loads(json.dumps({**(identity or {}), "predictor": predictor_name}))
    stale = stale_reason(workdir, identity, done)
    if stale:  # resuming would mix (or reuse) another predictor's answers
        done = {}
        if writer:
            if storage.exists(samples_path):
                storage.replace(samples_path, samples_path + ".stale")
            log.warning("%s: %s; the earlier samples are in %s.stale and this run starts over",
                        workdir, stale, samples_path)
    if writer:
        report.write_json(os.path.join(workdir, IDENTITY_FILE), identity)

    pending = Pending(done, retry_failed)
    todo = sum(1 for r in records if pending(r))
    items = eval_iterator(
        records,
        benchmark,
        done,
        retry_failed=retry_failed,
        check_videos=check_videos,
        prompt_kwargs=prompt_kwargs,
        prepare=getattr(predict_fn, "prepare", None),
        worker_count=worker_count,
    )
    appender = Appender(samples_path, fsync=fsync) if writer else NullAppender()
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(records),
        initial=len(records) - todo,
        unit="q",
        desc=f"{benchmark}:{predictor_name}",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        queue: list[dict[str, Any]] = []
        # lines of records that need no prediction (missing video, malformed): written with the next
        # batch, as each write republishes the whole object on a bucket
        unready: list[dict[str, Any]] = []

        def flush() -> None:
            results = _predict_isolating(predict_fn, queue) if queue else []
            lines = unready + [_line(rec, benchmark, pred, "ok" if err is None else "failed", err, zero_target,
                                     predictor_name, rules) for rec, (pred, err) in zip(queue, results)]
            appender.write_many(lines)
            bar.update(len(queue))
            queue.clear()
            unready.clear()

        for item in items:
            rec = item["record"]
            if item["status"] != "ready":
                unready.append(_line(rec, benchmark, "", item["status"], item["error"], zero_target, predictor_name,
                                     rules))
                bar.update(1)
                continue
            queue.append(rec)
            if len(queue) >= batch_size:
                flush()
        flush()
    finally:
        bar.close()
        appender.close()
        if hasattr(items, "close"):
            items.close()
    if not writer:
        return None
    return finalize(
        records,
        workdir,
        benchmark,
        predictor_name=predictor_name,
        zero_target=zero_target,
        rules=rules,
        na_defined=getattr(predict_fn, "na_defined", True),
        baselines=baselines,
        include_paper_row=include_paper_row,
        chart_baseline=chart_baseline,
        print_table=print_table,
    )


def _predict_isolating(predict_fn: PredictFn, batch: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """(prediction, error) per record. When a batch call raises (e.g. one unreadable video), each
    record is retried alone so one bad sample does not fail its neighbours. Answers are
    ``.strip()``-ed as the lmms-eval model wrapper does."""
    try:
        preds = predict_fn(batch)
        if len(preds) != len(batch):
            raise ValueError(f"predict_fn returned {len(preds)} answers for {len(batch)} records")
        return [(("" if p is None else str(p)).strip(), None) for p in preds]
    except Exception as e:
        if len(batch) > 1:
            return [r for rec in batch for r in _predict_isolating(predict_fn, [rec])]
        return [("", f"predictor error: {type(e).__name__}: {e}")]


def finalize(
    records: Sequence[Mapping[str, Any]],
    workdir: str,
    benchmark: str,
    *,
    predictor_name: str = "model",
    zero_target: str = "raise",
    rules: str = "paper",
    na_defined: bool = True,
    baselines: Mapping[str, Mapping[str, float]] | None = None,
    include_paper_row: bool = True,
    chart_baseline: str | None = None,
    print_table: bool = True,
) -> dict[str, Any]:
    """Scores ``samples.jsonl`` against ``records`` (record order) and writes the result files.
    Records without a line yet count as failures ("not run")."""
    scorer = SCORERS[benchmark]
    lines = read_samples(os.path.join(workdir, SAMPLES_FILE), repair=False)
    pairs: list[tuple[str, float]] = []
    footer: dict[str, Any] = {"failed": [], "malformed": [], "unattributed": [], "n_unparsable": 0}
    known = set(tasks.mc_types(benchmark) + tasks.na_types(benchmark))
    for rec in records:
        rid = str(rec["id"])
        line = lines.get(rid)
        qt = rec.get("question_type")
        if rec.get("_malformed"):
            footer["malformed"].append({"id": rid, "reason": rec["_malformed"]})
            if qt in known:
                pairs.append((qt, 0.0))
            else:
                footer["unattributed"].append({"id": rid, "reason": f"question_type {qt!r}"})
            continue
        if line is None:
            footer["failed"].append({"id": rid, "reason": "not run (no line in samples.jsonl)"})
            pairs.append((qt, 0.0))
            continue
        res = scorer.score_sample({**rec, "prediction": line.get("prediction") or ""}, zero_target, rules=rules)
        pairs.append((qt, res["score"]))
        if line.get("status") == "failed":
            footer["failed"].append({"id": rid, "reason": line.get("error") or "failed"})
        elif not res["parsable"]:
            footer["n_unparsable"] += 1
    footer.update(
        total=len(pairs),
        n_failed=len(footer["failed"]),
        n_malformed=len(footer["malformed"]),
        n_unattributed=len(footer["unattributed"]),
        n_records=len(records),
    )
    scores = scorer.aggregate(pairs) if pairs else {}
    counts: dict[str, int] = {"_total": len(pairs)}
    for qt, _ in pairs:
        key = tasks.task_of(qt, benchmark)
        counts[key] = counts.get(key, 0) + 1
    table_row: dict[str, float | None] = dict(scores)
    if not na_defined:
        for k in report.na_score_keys(benchmark) | {"overall", "paper_avg"}:
            if k in table_row:
                table_row[k] = None
    rows: dict[str, Mapping[str, float | None]] = {predictor_name: table_row}
    rows.update(baselines or {})
    if include_paper_row:
        rows.update(report.PAPER_ROWS[benchmark])
    table = report.markdown_table(benchmark, rows, footer, counts) + f"\n{report.rules_line(rules)}\n"
    paths = {
        "samples": os.path.join(workdir, SAMPLES_FILE),
        "scores": os.path.join(workdir, SCORES_FILE),
        "table": os.path.join(workdir, TABLE_FILE),
        "chart": os.path.join(workdir, CHART_FILE),
    }
    report.write_json(
        paths["scores"],
        {
            "benchmark": benchmark,
            "predictor": predictor_name,
            "rules": rules,
            "scores": scores,
            "table_row": table_row,
            "counts": counts,
            "footer": footer,
            "extra_ids_in_samples": len(set(lines) - {str(r["id"]) for r in records}),
        },
    )
    storage.write_atomic(paths["table"], table)
    if benchmark == "vsibench":  # lmms-eval's results + per-sample log next to ours (lmms-eval's rules)
        ok = [r for r in records if not r.get("_malformed")]
        preds = {rid: line.get("prediction") or "" for rid, line in lines.items()}
        paths.update({f"lmms_eval_{k}": v for k, v in
                      lmms_eval_io.write(workdir, ok, preds, predictor_name, zero_target).items()})
    chart_rows = {predictor_name: table_row}
    if chart_baseline:
        if chart_baseline not in rows:
            raise ValueError(f"chart_baseline {chart_baseline!r} is not a table row; rows: {list(rows)}")
        chart_rows[chart_baseline] = rows[chart_baseline]
    if scores:
        report.bar_chart(paths["chart"], benchmark, chart_rows, title=f"{benchmark}: {predictor_name}")
    if print_table:
        print(table)
    return {
        "scores": scores,
        "table_row": table_row,
        "counts": counts,
        "footer": footer,
        "table": table,
        "paths": paths,
    }
