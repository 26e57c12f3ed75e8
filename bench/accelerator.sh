#!/usr/bin/env bash
# One accelerator benchmark: whole VLM-3R 7B LoRA train step MFU, Qwen2-7B decode vs the HBM bound,
# SigLIP / CUT3R frames/s and a jax.profiler trace; appends a row to bench/RESULTS.md.
#   bash bench/accelerator.sh            # one H100 or one TPU host, < 8 minutes
#   bash bench/accelerator.sh --smoke    # tiny shapes on the CPU (the test suite runs this)
# Other flags go to bench/accelerator.py (--out DIR, --results FILE, --steps N).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
if [[ " $* " == *" --smoke "* ]]; then export JAX_PLATFORMS=cpu; fi
exec "$PY" bench/accelerator.py "$@"
