"""The lmms-eval plugin: ``python -m lmms_eval --model vlm3r_jax --model_args pretrained=...``.

lmms-eval 0.7 finds an outside model two ways, and both lead to
:class:`vlm3r_jax.lmms_eval.models.vlm3r_jax.VLM3RJax`:

* the ``lmms_eval.models`` entry point (setup.py) names :data:`vlm3r_jax.lmms_eval.manifest.MANIFEST`;
  an installed package needs nothing else;
* ``LMMS_EVAL_PLUGINS=vlm3r_jax.lmms_eval`` (deprecated upstream, but it works from a source
  checkout on ``PYTHONPATH``) makes lmms-eval read ``<plugin>.models.AVAILABLE_MODELS`` and add
  the folder of ``<plugin>.tasks`` to its task paths.

This package sits above :mod:`vlm3r_jax.api` in the import graph (with ``launch/``); nothing in the
library imports it, and only its modules import ``lmms_eval``. See docs/evaluation.md.
"""

MODEL_NAME = "vlm3r_jax"
CLASS_PATH = "vlm3r_jax.lmms_eval.models.vlm3r_jax.VLM3RJax"
