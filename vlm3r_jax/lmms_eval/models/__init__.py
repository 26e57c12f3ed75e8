"""What ``LMMS_EVAL_PLUGINS=vlm3r_jax.lmms_eval`` reads: model name -> class name, the class living in
``vlm3r_jax.lmms_eval.models.<model name>`` (lmms-eval builds that path itself)."""

AVAILABLE_MODELS = {"vlm3r_jax": "VLM3RJax"}
