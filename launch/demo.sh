#!/usr/bin/env bash
# The README's main command: the end-to-end demo on the built-in default.
# Extra arguments go to `python -m launch.demo` (see --help).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
exec python -m launch.demo "$@"
