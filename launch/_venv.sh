# Sourced by the launch scripts: make sure .venv exists and holds this package with the extras the
# caller names in VLM3R_EXTRAS ("" for the runtime only: the demo; "test,tfds": the test suite).
# A stamp per extras set, keyed on setup.py's hash, skips pip when nothing changed. The stamp is
# written only after pip succeeds, and removed before it starts, so an interrupted install (Ctrl-C,
# a dropped network) is simply retried by the next run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
EXTRAS="${VLM3R_EXTRAS:-}"
# a venv whose creation was interrupted has no working pip: start it again
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  echo "[vlm3r_jax] creating .venv with $($PY --version)" >&2
  "$PY" -m venv --clear .venv
fi
STAMP=".venv/.vlm3r_installed${EXTRAS:+_${EXTRAS//,/_}}"
WANT="$(sha256sum setup.py | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  rm -f "$STAMP"
  SPEC="."
  [ -n "$EXTRAS" ] && SPEC=".[$EXTRAS]"
  echo "[vlm3r_jax] installing $SPEC into .venv (first run: a few minutes; see the README for the size)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e "$SPEC"
  # lmms-eval (test extra) pulls torchvision. PyPI's Linux wheels of it are CUDA builds, which
  # cannot load next to a CPU-only torch (a torch+cpu wheel) and then break every transformers
  # import that probes for it. Nothing here uses torchvision: drop one that does not import.
  if .venv/bin/python -m pip show -q torchvision >/dev/null 2>&1 \
     && ! .venv/bin/python -c "import torchvision" >/dev/null 2>&1; then
    echo "[vlm3r_jax] removing torchvision: it does not import against this torch" >&2
    .venv/bin/python -m pip uninstall -q -y torchvision
  fi
  echo "$WANT" > "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
