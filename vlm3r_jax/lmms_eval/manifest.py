"""The ``lmms_eval.models`` entry point's payload. lmms-eval loads every such entry point whenever
it builds its model registry, whatever model is asked for, so this module imports nothing but the
manifest class: the adapter (and JAX) load only when ``--model vlm3r_jax`` is chosen."""

from lmms_eval.models.registry_v2 import ModelManifest

from vlm3r_jax.lmms_eval import CLASS_PATH, MODEL_NAME

MANIFEST = ModelManifest(model_id=MODEL_NAME, simple_class_path=CLASS_PATH)
