"""VSI-Bench and VSTI-Bench scoring and the model-independent evaluation loop.

``vsibench.score`` / ``vstibench.score`` (the public contract), ``metrics`` (extraction, MRA),
``prompts`` (official question text), ``records`` (benchmark directory reader), ``runner``
(resumable ``run_eval`` + baseline predictors), ``report`` (JSON, table, chart). See
docs/evaluation.md.
"""
