"""The benchmark scorers by name: ``SCORERS[benchmark]`` is the module with ``score(samples)``,
``score_sample`` and ``answer_of``; ``SCORE_FNS[benchmark]`` its ``score``."""

from __future__ import annotations

from collections.abc import Callable

from vlm3r_jax.eval import vsibench, vstibench

SCORERS = {"vsibench": vsibench, "vstibench": vstibench}
SCORE_FNS: dict[str, Callable[[list[dict]], dict]] = {name: mod.score for name, mod in SCORERS.items()}
