"""Blind baselines: predictions that never look at the video. Every baseline lives here.

Two families, kept apart because they answer different questions and both have published
numbers (docs/evaluation.md, docs/demo.md):

**Predictors** (``predict_fn`` for :func:`vlm3r_jax.eval.runner.run_eval`, ``launch.eval
--config.predictor=chance|prior``), fitted on benchmark-format records:
- :func:`chance_predictor`: a uniformly random option letter per record id; "" for numeric questions.
- :func:`prior_predictor`: per question type the most frequent answer letter or the mean answer
  (on the test records this is VSI-Bench's "chance level (frequency)").

**Dataset baselines** (``data_pipeline.make_dataset(..., baselines=run_baselines)``), fitted on a
generated *train* split's raw QA items, which know each option's text; they produce *prediction
strings* for VSI-Bench / VSTI-Bench layout records, scored by ``score_fns`` when given:

- chance: a uniformly random option letter (MC); for numeric questions a random draw from
  the training answers of that question type (a blind guess at the right scale).
- prior: fitted on the *train* split only. MC: the option whose text is the most frequent
  training answer of that type when it is offered, else the most frequent correct letter.
  Numeric: the mean training answer of that type.
- text prior: the best a model that reads the question but not the video can do, roughly. Also
  fitted on the train split. Numeric: the median training answer of the same question text (first
  line; it names the categories, e.g. "the chair"), else of the type. MC: the option whose text
  won most often when offered (Laplace-smoothed), per question target ("closest to the bed") and
  then per type. The demo's target is defined against the prior; this row shows how much of a
  gain over the prior text alone can explain (docs/demo.md).
"""

from __future__ import annotations

import re
import statistics
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from data_pipeline.engine.formats import VSI_EVAL_NAME, VSTI_EVAL_NAME, is_numeric
from vlm3r_jax.eval import metrics, prompts, tasks
from vlm3r_jax.eval.runner import PredictFn
from vlm3r_jax.eval.scorers import SCORE_FNS, SCORERS


# --- predictors over benchmark-format records --------------------------------------------------
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


# --- dataset baselines over raw QA items ---------------------------------------------------------
_NAMES = {"vsibench": VSI_EVAL_NAME, "vstibench": VSTI_EVAL_NAME}


def _eval_type(item: dict, bench: str) -> str | None:
    return _NAMES[bench].get(item["question_type"])


def _record_is_numeric(rec: dict, bench: str) -> bool:
    inv = {v: k for k, v in _NAMES[bench].items()}
    return is_numeric(inv.get(rec["question_type"], rec["question_type"]))


def fit_prior(train_items: list[dict], bench: str) -> dict[str, dict]:
    """Per benchmark question_type: {"mean": float} (numeric) or {"text": str, "letter": str}."""
    groups: dict[str, list[dict]] = {}
    for it in train_items:
        t = _eval_type(it, bench)
        if t is not None:
            groups.setdefault(t, []).append(it)
    prior = {}
    for t, items in groups.items():
        if is_numeric(items[0]["question_type"]):
            vals = np.array([float(i["ground_truth"]) for i in items])
            prior[t] = {"mean": float(vals.mean()), "values": vals.tolist()}
        else:
            text = Counter(str(i["ground_truth"]) for i in items).most_common(1)[0][0]
            letter = Counter(str(i["mc_answer"]) for i in items).most_common(1)[0][0]
            prior[t] = {"text": text, "letter": letter}
    return prior


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def predict_prior(prior: dict[str, dict], records: list[dict], bench: str) -> list[str]:
    preds = []
    for rec in records:
        p = prior.get(rec["question_type"])
        if _record_is_numeric(rec, bench):
            preds.append(_fmt(p["mean"]) if p else "1")
            continue
        if p is None:
            preds.append("A")
            continue
        texts = {_option_text(o): _option_letter(o) for o in rec["options"]}
        preds.append(texts.get(p["text"], p["letter"]))
    return preds


def predict_chance(prior: dict[str, dict], records: list[dict], bench: str, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    preds = []
    for rec in records:
        if _record_is_numeric(rec, bench):
            vals = prior.get(rec["question_type"], {}).get("values") or [1.0]
            preds.append(_fmt(float(vals[int(rng.integers(len(vals)))])))
        else:
            preds.append(_option_letter(rec["options"][int(rng.integers(len(rec["options"])))]))
    return preds


def _question_key(text: str) -> str:
    return text.split("\n", 1)[0].strip()


def _target(text: str) -> str:
    m = re.search(r"closest to the (.+?)\?", text)
    return m.group(1) if m else ""


def _option_text(option: str) -> str:
    return option.split(". ", 1)[1] if ". " in option else option


def _option_letter(option: str) -> str:
    return option.split(".", 1)[0]


def fit_text_prior(train_items: list[dict], bench: str) -> dict:
    """-> {"numeric": {(type, question): [values]}, "type_numeric": {type: [values]},
    "won": Counter, "offered": Counter} keyed by (type, target, option text)."""
    fit: dict = {"numeric": {}, "type_numeric": {}, "won": Counter(), "offered": Counter()}
    for it in train_items:
        t = _eval_type(it, bench)
        if t is None:
            continue
        if is_numeric(it["question_type"]):
            v = float(it["ground_truth"])
            fit["numeric"].setdefault((t, _question_key(it["question"])), []).append(v)
            fit["type_numeric"].setdefault(t, []).append(v)
            continue
        answer = {_option_letter(o): _option_text(o) for o in it["options"]}.get(str(it["mc_answer"]))
        targets = (_target(it["question"]), None)
        for o in it["options"]:
            text = _option_text(o)
            for target in targets:
                fit["offered"][(t, target, text)] += 1
                fit["won"][(t, target, text)] += text == answer
    return fit


def _win_rate(fit: dict, qtype: str, target: str | None, option: str) -> float:
    key = (qtype, target, _option_text(option))
    return (fit["won"][key] + 1) / (fit["offered"][key] + 2)  # Laplace: unseen options score 0.5


def predict_text_prior(fit: dict, records: list[dict], bench: str) -> list[str]:
    preds = []
    for rec in records:
        t = rec["question_type"]
        if _record_is_numeric(rec, bench):
            vals = fit["numeric"].get((t, _question_key(rec["question"]))) or fit["type_numeric"].get(t) or [1.0]
            preds.append(_fmt(statistics.median(vals)))
            continue

        target = _target(rec["question"])
        best = max(rec["options"], key=lambda o, t=t, target=target: (_win_rate(fit, t, target, o),
                                                                      _win_rate(fit, t, None, o)))
        preds.append(_option_letter(best))
    return preds


def with_predictions(records: list[dict], preds: list[str]) -> list[dict]:
    return [{**r, "prediction": p} for r, p in zip(records, preds)]


def run_baselines(train_items: list[dict], records: dict[str, list[dict]], seed: int = 0,
                  score_fns: dict[str, Callable[[list[dict]], dict]] | None = None) -> dict:
    """``records``: {"vsibench": [...], "vstibench": [...]} -> {bench: {"chance"|"prior"|"text_prior":
    {"samples": [... with "prediction"], "scores": score_fn(samples) or None}}}."""
    out = {}
    for bench, recs in records.items():
        prior = fit_prior(train_items, bench)
        res = {}
        kinds = (("chance", predict_chance(prior, recs, bench, seed)), ("prior", predict_prior(prior, recs, bench)),
                 ("text_prior", predict_text_prior(fit_text_prior(train_items, bench), recs, bench)))
        for kind, preds in kinds:
            samples = with_predictions(recs, preds)
            fn = (score_fns or {}).get(bench)
            res[kind] = {"samples": samples, "scores": fn(samples) if fn and samples else None}
        out[bench] = res
    return out


def dataset_baselines(train_items: list[dict], records: dict[str, list[dict]], seed: int = 0) -> dict:
    """:func:`run_baselines` scored with the project scorers: what ``launch.make_dataset`` and
    the demo hand to :func:`data_pipeline.make_dataset.make_dataset`."""
    return run_baselines(train_items, records, seed=seed, score_fns=SCORE_FNS)
