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
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vlm3r_jax.eval import metrics, prompts, report, tasks, vsibench, vstibench

log = logging.getLogger(__name__)

PredictFn = Callable[[list[dict[str, Any]]], list[str]]
SAMPLES_FILE, SCORES_FILE, TABLE_FILE, CHART_FILE = "samples.jsonl", "scores.json", "table.md", "chart.png"
SCORERS = {"vsibench": vsibench, "vstibench": vstibench}
VIDEO_CHECKS = ("none", "exists", "open")


# --------------------------------------------------------------------------------------------
# Baseline predictors (usable as predict_fn; also what tests run).
# --------------------------------------------------------------------------------------------
def _stable_int(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def chance_predictor(seed: int = 0, benchmark: str = "vsibench") -> PredictFn:
    """Uniform random option letter for MC questions, seeded per (seed, record id) so the answer
    does not depend on batching or resuming. NA questions get "" (chance is undefined there, the
    table shows "–"; VSI-Bench's own chance row has no NA values either)."""

    def predict(batch: list[dict[str, Any]]) -> list[str]:
        out = []
        for rec in batch:
            letters = prompts.option_letters(rec)
            if letters and tasks.is_multiple_choice(rec["question_type"], benchmark):
                rng = np.random.default_rng([seed, _stable_int(str(rec["id"]))])
                out.append(letters[int(rng.integers(len(letters)))])
            else:
                out.append("")
        return out

    predict.na_defined = False  # type: ignore[attr-defined]
    predict.name = "chance"  # type: ignore[attr-defined]
    return predict


def prior_predictor(fit_records: Sequence[Mapping[str, Any]], benchmark: str = "vsibench") -> PredictFn:
    """Blind prior: per question type, the most frequent answer letter (MC; ties -> first in
    alphabetical order) or the mean ground truth (NA), fitted on ``fit_records`` (the test records
    give VSI-Bench's "chance level (frequency)"; pass training records for a fair prior)."""
    scorer = SCORERS[tasks.check_benchmark(benchmark)]
    letters: dict[str, Counter] = {}
    values: dict[str, list[float]] = {}
    for i, rec in enumerate(fit_records):
        if rec.get("_malformed") or rec.get("question_type") not in tasks.mc_types(benchmark) + tasks.na_types(
            benchmark
        ):
            continue
        answer = scorer.answer_of(rec, i)
        if tasks.is_multiple_choice(rec["question_type"], benchmark):
            letters.setdefault(rec["question_type"], Counter())[str(answer).strip().upper()] += 1
        elif (v := metrics.to_float(answer)) is not None:
            values.setdefault(rec["question_type"], []).append(v)
    best = {qt: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for qt, c in letters.items()}
    means = {qt: metrics.mean(v) for qt, v in values.items()}

    def predict(batch: list[dict[str, Any]]) -> list[str]:
        out = []
        for rec in batch:
            qt = rec["question_type"]
            if qt in best:
                out.append(best[qt])
            elif qt in means:
                out.append(f"{means[qt]:.4g}")
            else:
                out.append("")
        return out

    predict.name = "prior"  # type: ignore[attr-defined]
    return predict


# --------------------------------------------------------------------------------------------
# Per-sample JSONL, and what produced it.
# --------------------------------------------------------------------------------------------
IDENTITY_FILE = "run_identity.json"


def _stale_reason(workdir: str, identity: Mapping[str, Any], done: Mapping[str, dict]) -> str | None:
    """Why the samples already in ``workdir`` cannot be resumed by this run (None: they can)."""
    if not done:
        return None
    others = {d.get("predictor") for d in done.values()} - {identity["predictor"]}
    if others:
        return f"its samples came from predictor {sorted(map(str, others))}, not {identity['predictor']!r}"
    path = os.path.join(workdir, IDENTITY_FILE)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                before = json.load(f)
        except (OSError, json.JSONDecodeError):
            return f"{path} is unreadable"
        changed = sorted(k for k in set(before) | set(identity) if before.get(k) != identity.get(k))
        if changed:
            return f"the run that wrote its samples differs in {changed} (e.g. the checkpoint was trained further)"
    return None


def read_samples(path: str, repair: bool = True) -> dict[str, dict[str, Any]]:
    """id -> latest line of a per-sample JSONL. A torn final line (crash mid-write) is dropped and,
    with ``repair``, cut from the file so appends continue on a clean line."""
    out: dict[str, dict[str, Any]] = {}
    if not os.path.exists(path):
        return out
    with open(path, "rb") as f:
        data = f.read()
    good_end = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # no newline: torn last line
        line = data[pos:nl]
        pos = nl + 1
        if not line.strip():
            good_end = pos
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}: corrupt line at byte {pos - len(line) - 1} ({e.msg}); delete that line to resume"
            ) from e
        out[str(rec["id"])] = rec
        good_end = pos
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return out


class _Appender:
    """Appends whole lines with one ``os.write`` each on an O_APPEND descriptor (+ fsync)."""

    def __init__(self, path: str, fsync: bool = True):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.fsync = fsync

    def write(self, obj: Mapping[str, Any]) -> None:
        data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self.fd, data)
        if written != len(data):  # pragma: no cover - only on a full disk
            raise OSError(f"short write to samples.jsonl ({written}/{len(data)} bytes)")
        if self.fsync:
            os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class _NullAppender:
    """What non-writer processes of a multi-host run use."""

    def write(self, obj: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def check_video(path: str | None, mode: str = "exists") -> str | None:
    """Why the video cannot be used (None when fine). ``mode``: "none" (skip), "exists" (a file is
    there), "open" (PyAV opens it and decodes one frame)."""
    if mode not in VIDEO_CHECKS:
        raise ValueError(f"check_videos={mode!r}; expected one of {VIDEO_CHECKS}")
    if mode == "none":
        return None
    if not path or not os.path.isfile(path):
        return f"video missing: {path}"
    if mode == "open":
        try:
            import av

            with av.open(path) as container:
                if not container.streams.video:
                    return f"video unreadable: {path} has no video stream"
                next(container.decode(video=0))
        except Exception as e:  # any decoder error means the sample cannot be answered
            return f"video unreadable: {path} ({type(e).__name__}: {e})"
    return None


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
        res = SCORERS[benchmark].score_sample({**rec, "prediction": prediction}, zero_target)
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


class _Pending:
    """Whether a record still needs an answer, given the lines already in samples.jsonl
    (picklable: it runs as a Grain filter, possibly in worker processes)."""

    def __init__(self, done: Mapping[str, Mapping[str, Any]], retry_failed: bool):
        self.status = {rid: line.get("status") for rid, line in done.items()}
        self.retry_failed = retry_failed

    def __call__(self, rec: Mapping[str, Any]) -> bool:
        rid = str(rec["id"])
        if rid not in self.status:
            return True
        prev = self.status[rid]
        if prev == "malformed" and not rec.get("_malformed"):
            return True  # the record was fixed since: answer it now
        return self.retry_failed and prev == "failed"


class _PrepareItem:
    """record -> ``{"record", "status" (ready|failed|malformed), "error"}``: the official prompt,
    the video check and the predictor's own ``prepare`` (picklable; runs in Grain workers)."""

    def __init__(
        self,
        benchmark: str,
        check_videos: str,
        prompt_kwargs: Mapping[str, str] | None,
        prepare: Callable[[dict[str, Any]], dict[str, Any]] | None,
    ):
        self.benchmark, self.check_videos = benchmark, check_videos
        self.prompt_kwargs = dict(prompt_kwargs or {})
        self.prepare = prepare

    def __call__(self, rec: Mapping[str, Any]) -> dict[str, Any]:
        rec = dict(rec)
        if rec.get("_malformed"):
            return {"record": rec, "status": "malformed", "error": rec["_malformed"]}
        why = check_video(rec.get("video_path"), self.check_videos)
        if why:
            return {"record": rec, "status": "failed", "error": why}
        rec["prompt"] = prompts.build_question(rec, self.benchmark, **self.prompt_kwargs)
        if self.prepare is not None:
            try:
                rec = self.prepare(rec)
            except Exception as e:  # an undecodable video fails its sample only
                return {"record": rec, "status": "failed", "error": f"prepare error: {type(e).__name__}: {e}"}
        return {"record": rec, "status": "ready", "error": None}


def eval_dataset(
    records: Sequence[Mapping[str, Any]],
    benchmark: str = "vsibench",
    done: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    retry_failed: bool = False,
    check_videos: str = "exists",
    prompt_kwargs: Mapping[str, str] | None = None,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Any:
    """The eval stream as a ``grain.MapDataset`` over ``records`` (any random-access source, e.g.
    :class:`vlm3r_jax.eval.records.BenchmarkRecords` or a list), in record order: ids finished in
    ``done`` (the lines of samples.jsonl) are filtered out, then each item is
    ``{"record", "status", "error"}`` (see :class:`_PrepareItem`).

    The resume position is therefore the JSONL itself: restarting after a crash yields exactly
    the records without a line, in the same order as the uninterrupted stream's tail. (Grain's
    own iterator state, ``get_state``/``set_state``, also works on it, but is not needed.)"""
    import grain

    if check_videos not in VIDEO_CHECKS:
        raise ValueError(f"check_videos={check_videos!r}; expected one of {VIDEO_CHECKS}")
    ds = grain.MapDataset.source(records)
    if done:
        ds = ds.filter(_Pending(done, retry_failed))
    return ds.map(_PrepareItem(benchmark, check_videos, prompt_kwargs, prepare))


def eval_iterator(
    records: Sequence[Mapping[str, Any]],
    benchmark: str = "vsibench",
    done: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    worker_count: int = 0,
    **kw: Any,
) -> Any:
    """Iterator over :func:`eval_dataset` (filtered items skipped), with ``worker_count`` Grain
    worker processes when > 0 (order is kept)."""
    import grain

    it = eval_dataset(records, benchmark, done, **kw).to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
    )
    if worker_count > 0:
        from data_pipeline.pipeline import _ensure_absl_flags
        from data_pipeline.worker_lifetime import exit_with_parent

        _ensure_absl_flags()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=2),
                            worker_init_fn=exit_with_parent)
    return iter(it)


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
    metrics.score_numeric("0", 1, zero_target)  # validates the policy name early
    predictor_name = predictor_name or getattr(predict_fn, "name", "model")
    ids = [str(r["id"]) for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError("records have duplicate ids; resuming keys on ids, make them unique")
    if zero_target == "raise":
        _check_zero_targets(records, benchmark)
    os.makedirs(workdir, exist_ok=True)
    samples_path = os.path.join(workdir, SAMPLES_FILE)
    done = read_samples(samples_path, repair=writer)  # only the writer may cut a torn line
    # as it reads back from the file (tuples become lists), so equal runs compare equal
    identity = json.loads(json.dumps({**(identity or {}), "predictor": predictor_name}))
    stale = _stale_reason(workdir, identity, done)
    if stale:  # resuming would mix (or reuse) another predictor's answers
        done = {}
        if writer:
            if os.path.exists(samples_path):
                os.replace(samples_path, samples_path + ".stale")
            log.warning("%s: %s; the earlier samples are in %s.stale and this run starts over",
                        workdir, stale, samples_path)
    if writer:
        report.write_json(os.path.join(workdir, IDENTITY_FILE), identity)

    pending = _Pending(done, retry_failed)
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
    appender = _Appender(samples_path, fsync=fsync) if writer else _NullAppender()
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

        def flush() -> None:
            if not queue:
                return
            results = _predict_isolating(predict_fn, queue)
            for rec, (pred, err) in zip(queue, results):
                status = "ok" if err is None else "failed"
                appender.write(_line(rec, benchmark, pred, status, err, zero_target, predictor_name))
            bar.update(len(queue))
            queue.clear()

        for item in items:
            rec = item["record"]
            if item["status"] != "ready":
                appender.write(_line(rec, benchmark, "", item["status"], item["error"], zero_target, predictor_name))
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
        res = scorer.score_sample({**rec, "prediction": line.get("prediction") or ""}, zero_target)
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
    table = report.markdown_table(benchmark, rows, footer, counts)
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
            "scores": scores,
            "table_row": table_row,
            "counts": counts,
            "footer": footer,
            "extra_ids_in_samples": len(set(lines) - {str(r["id"]) for r in records}),
        },
    )
    report.atomic_write(paths["table"], table)
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
