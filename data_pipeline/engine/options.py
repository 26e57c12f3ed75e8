"""Multiple-choice option builders (distractors) and balanced answer-letter assignment.

Same rules as the official engine (``common_utils.generate_multiple_choice``,
``from_options_to_mc_answer``, the counting generator), re-implemented on a seeded
``np.random.Generator`` so that results depend only on the seed.
"""

from __future__ import annotations

import math

import numpy as np

LETTERS = "ABCD"


def _round(x: float, decimals: int):
    return int(round(x)) if decimals == 0 else round(float(x), decimals)


def numeric_options(gt, rng: np.random.Generator, margin: float = 0.2, lower: float = 0.25,
                    upper: float = 1.75, decimals: int = 1, max_rounds: int = 30) -> list | None:
    """Three distractors drawn uniformly in ``[lower*gt, upper*gt]`` at ``decimals`` precision,
    all at least ``ceil(gt*margin)`` (at that precision) from each other and from ``gt``.
    Returns ``[d1, d2, d3, gt]`` or ``None`` when no such set was found (item dropped)."""
    scale = 10 ** decimals
    eps = math.ceil(gt * margin * scale) / scale

    def draw():
        return _round(rng.uniform(gt * lower, gt * upper), decimals)

    choices = [draw() for _ in range(3)]

    def bad(i):
        others = choices[:i] + choices[i + 1:] + [gt]
        return any(abs(choices[i] - o) < eps for o in others)

    for _ in range(max_rounds + 1):
        idx = [i for i in range(3) if bad(i)]
        if not idx:
            return choices + [gt]
        for i in idx:
            choices[i] = draw()
    return None


def count_options(gt: int, rng: np.random.Generator) -> list[int]:
    """Counting distractors: gt plus 3 distinct values gt+offset, offsets from +-1..3 (then
    +-4..5 when clipping at 1 collides), never below 1."""
    choices = [gt]
    offsets = [o for o in range(-3, 4) if o != 0]
    while len(choices) < 4:
        if not offsets:
            offsets = [o for o in range(-5, 6) if o != 0 and max(1, gt + o) not in choices]
            if not offsets:
                offsets = [len(choices) + 5]
        o = offsets.pop(int(rng.integers(len(offsets))))
        v = max(1, gt + o)
        if v not in choices:
            choices.append(v)
    return choices


class LetterBalancer:
    """Puts the correct answer at the least-used letter so far (ties broken at random), per
    question type, as the official ``from_options_to_mc_answer`` does with its global counts.
    Share one instance across scenes to balance a whole dataset."""

    def __init__(self):
        self.counts: dict[str, dict[str, int]] = {}

    def place(self, qtype: str, options: list, gt, rng: np.random.Generator) -> tuple[list, str]:
        n = len(options)
        letters = LETTERS[:n]
        cnt = self.counts.setdefault(qtype, {})
        low = min(cnt.get(c, 0) for c in letters)
        lows = [c for c in letters if cnt.get(c, 0) == low]
        target = lows[int(rng.integers(len(lows)))]
        rest = list(options)
        rest.remove(gt)
        rest = [rest[i] for i in rng.permutation(len(rest))]
        k = letters.index(target)
        final = rest[:k] + [gt] + rest[k:]
        cnt[target] = cnt.get(target, 0) + 1
        return final, target


def lettered(options: list) -> list[str]:
    return [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
