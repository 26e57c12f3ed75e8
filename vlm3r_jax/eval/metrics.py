r"""Answer extraction and the two per-sample metrics shared by VSI-Bench and VSTI-Bench.

Rules restated from the official scorer (thinking-in-space ``lmms_eval/tasks/vsibench/utils.py``,
identical in VLM-3R's ``vstibench/utils.py``); the code here is our own:

* extraction (``fuzzy_matching``): cut the text at its first ``' '`` (a plain space, not any
  whitespace), strip trailing ``'.'`` characters, then strip whitespace. The lmms-eval model wrapper
  has already ``.strip()``-ed the decoded text, so :func:`parse_prediction` strips first.
* multiple choice: case-insensitive string equality of the extracted text with the answer letter.
  "A", "a", "A." and "A. chair" score; "(A)", "A)", "Answer: A" and the bare option text do not.
* numerical: ``float()`` of the extracted text (Python's own rules: "3", "3.", "1e1", "1_0" parse;
  "3m", "1,000", "three" do not). An unparsable prediction or ground truth scores 0.
* Mean Relative Accuracy: mean over the 10 values θ of ``np.linspace(.5, .95, int((.95-.5)/.05+2))``
  of ``|ŷ-y|/y <= 1-θ`` (note ``<=``; the paper writes ``<``). We evaluate the same float expression
  so boundary cases (e.g. |ŷ-y|/y == 0.5 passes θ=0.5) come out bit-identical.
* rule sets (``rules=``): ``"paper"`` is everything above (thinking-in-space, the paper's table);
  ``"lmms-eval"`` is lmms-eval 0.7's VSI-Bench scorer, which differs in one place only: a numeric
  prediction is the FIRST number anywhere in the text, digits (``-?\d+(\.\d+)?``) or a run of
  English number words ("three", "twenty-one", "three hundred and twenty-one"), whichever starts
  first. "About 3.2 m" -> 3.2, "three chairs" -> 3. Multiple choice is the same in both.
* y == 0: the official code divides by zero and the whole evaluation dies with ZeroDivisionError
  when the prediction parses (an unparsable prediction still scores 0 first, via TypeError).
  ``zero_target="raise"`` (default) reproduces that as a ValueError naming the sample;
  ``zero_target="exact"`` scores 1 if ŷ == 0 else 0 (the limit of the rule, our extension).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

MRA_START, MRA_END, MRA_INTERVAL = 0.5, 0.95, 0.05
# Same construction as the official code: (0.95-0.5)/0.05 + 2 = 10.999... -> int -> 10 points.
MRA_THRESHOLDS = np.linspace(MRA_START, MRA_END, int((MRA_END - MRA_START) / MRA_INTERVAL + 2))
ZERO_TARGET_POLICIES = ("raise", "exact")
RULE_SETS = ("paper", "lmms-eval")

_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORDS = {**{w: i for i, w in enumerate(_UNITS)}, **{w: 20 + 10 * i for i, w in enumerate(_TENS)},
                "hundred": 100, "thousand": 1000}
_DIGITS = re.compile(r"-?\d+(?:\.\d+)?")
_WORD = re.compile(r"[a-z]+")


def check_rules(rules: str) -> str:
    if rules not in RULE_SETS:
        raise ValueError(f"rules={rules!r}; expected one of {RULE_SETS}")
    return rules


def first_number(text: Any) -> float | None:
    """lmms-eval 0.7's numeric extraction (see the module docstring): the first digit group or
    number-word run of the lower-cased text, or None. Words inside a run may be separated by any
    non-letters and by "and"; "hundred" multiplies the running group, "thousand" closes it."""
    s = "" if text is None else str(text).strip().lower()
    digits = _DIGITS.search(s)
    start, words = None, []
    for m in _WORD.finditer(s):
        w = m.group(0)
        if start is None and w in NUMBER_WORDS:
            start = m.start()
        elif start is None or w == "and":
            continue
        elif w not in NUMBER_WORDS:
            break
        words.append(w)
    if digits is not None and (start is None or digits.start() < start):
        return float(digits.group(0))
    if start is None:
        return None
    total = group = 0
    for w in words:
        v = NUMBER_WORDS[w]
        if v == 100:
            group = max(group, 1) * 100
        elif v == 1000:
            total, group = total + max(group, 1) * 1000, 0
        else:
            group += v
    return float(total + group)


def fuzzy_matching(pred: str) -> str:
    """The official answer extraction: first ``' '``-separated field, trailing dots and then
    surrounding whitespace removed. ``"A. chair"`` -> ``"A"``, ``"3 chairs"`` -> ``"3"``."""
    return pred.split(" ")[0].rstrip(".").strip()


def parse_prediction(text: str) -> str:
    """Extraction from the decoded model text as the whole official pipeline does it:
    the model wrapper's ``.strip()`` followed by :func:`fuzzy_matching`."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    return fuzzy_matching(text.strip())


def to_float(value: Any) -> float | None:
    """``float(value)``, or None when that raises (the official ``to_float``)."""
    try:
        return float(value)
    except Exception:
        return None


def exact_match(pred: str, target: Any) -> float:
    """1.0 when ``pred`` equals ``target`` ignoring case, else 0.0."""
    return 1.0 if pred.lower() == str(target).lower() else 0.0


def mean_relative_accuracy(pred: float, target: float) -> float:
    """MRA of one numeric prediction; ``target`` must be non-zero (see :func:`score_numeric`)."""
    rel = abs(pred - target) / target
    return float((rel <= 1 - MRA_THRESHOLDS).mean())


def score_multiple_choice(prediction: str, answer: Any) -> dict[str, Any]:
    """Per-sample MC score. ``answer`` is the option letter (VSI ``ground_truth``, VSTI ``mc_answer``).

    Returns ``{"parsed", "score", "metric": "accuracy", "parsable"}``; ``parsable`` (one ASCII
    letter was extracted) is informational only, the score follows the official rule."""
    parsed = parse_prediction(prediction)
    return {
        "parsed": parsed,
        "score": exact_match(parsed, answer),
        "metric": "accuracy",
        "parsable": len(parsed) == 1 and parsed.isascii() and parsed.isalpha(),
    }


def score_numeric(
    prediction: str, ground_truth: Any, zero_target: str = "raise", sample_id: Any = None, rules: str = "paper"
) -> dict[str, Any]:
    """Per-sample NA score (MRA) under ``rules`` (:data:`RULE_SETS`). Returns ``{"parsed",
    "score", "metric": "mra", "parsable"}``."""
    if zero_target not in ZERO_TARGET_POLICIES:
        raise ValueError(f"zero_target={zero_target!r}; expected one of {ZERO_TARGET_POLICIES}")
    if check_rules(rules) == "paper":
        parsed = parse_prediction(prediction)
        pred = to_float(parsed)
    else:
        pred = first_number(prediction)
        parsed = "" if pred is None else repr(pred)
    target = to_float(ground_truth)
    out = {"parsed": parsed, "score": 0.0, "metric": "mra", "parsable": pred is not None}
    if pred is None or target is None:
        return out  # the official TypeError branch: worst case, 0
    if target == 0.0:
        if zero_target == "raise":
            raise ValueError(
                f"sample {sample_id!r}: numerical ground_truth is 0, where relative accuracy divides by zero "
                "(the official scorer dies with ZeroDivisionError here). Fix the record, or pass "
                "zero_target='exact' (score 1 iff the prediction is exactly 0)."
            )
        out["score"] = 1.0 if pred == 0.0 else 0.0
        return out
    out["score"] = mean_relative_accuracy(pred, target)
    return out


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean with numpy's pairwise summation (what pandas' ``.mean()`` uses)."""
    if len(values) == 0:
        raise ValueError("mean of no values")
    return float(np.asarray(values, dtype=np.float64).mean())


def group_means(pairs: Iterable[tuple[str, float]]) -> tuple[dict[str, float], dict[str, int]]:
    """Mean score and count per key from ``(key, score)`` pairs; keys keep first-seen order."""
    buckets: dict[str, list[float]] = {}
    for key, value in pairs:
        buckets.setdefault(key, []).append(float(value))
    return {k: mean(v) for k, v in buckets.items()}, {k: len(v) for k, v in buckets.items()}


def required_field(sample: Mapping[str, Any], key: str, index: int, benchmark: str, needs: str) -> Any:
    """``sample[key]``, or a ValueError naming the sample and the fields a sample needs."""
    if key not in sample:
        raise ValueError(
            f"{benchmark} sample #{index} (id={sample.get('id')!r}) has no {key!r} field; each sample needs {needs}"
        )
    return sample[key]


def score_prediction(prediction: str | None, answer: Any, multiple_choice: bool, zero_target: str,
                     sample_id: Any, rules: str = "paper") -> dict[str, Any]:
    """One sample by the official rules: MC letter match or numeric MRA. A missing/None
    prediction (a failed sample) scores 0."""
    prediction = "" if prediction is None else prediction
    if multiple_choice:
        return score_multiple_choice(prediction, answer)
    return score_numeric(prediction, answer, zero_target, sample_id, rules)
