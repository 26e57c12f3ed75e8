#!/usr/bin/env bash
# The test command of the README: lint, then the full default test suite.
#   bash launch/test.sh            # default suite (what CI runs)
#   bash launch/test.sh --all      # also the tests marked slow (nightly)
#   bash launch/test.sh -k qwen2   # extra arguments go to pytest
VLM3R_EXTRAS="test,tfds" source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ARGS=()
for a in "$@"; do
  if [ "$a" = "--all" ]; then ARGS+=(-m "slow or not slow"); else ARGS+=("$a"); fi
done
echo "[vlm3r_jax] ruff check" >&2
ruff check .
echo "[vlm3r_jax] pytest" >&2
set +e
python -m pytest -n "${PYTEST_WORKERS:-2}" "${ARGS[@]}"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[vlm3r_jax] pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
