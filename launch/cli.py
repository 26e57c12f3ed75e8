"""What the absl launchers share: ``run(main)`` is ``app.run(main)`` with the behaviour users expect
of a command.

- ``--help`` / ``-h`` print the help and exit 0 (absl exits 1).
- An unknown ``--config.some.key`` names the key and lists the valid ones at the deepest level that
  exists (ml_collections raises a bare ``AttributeError`` that absl does not catch).
- A ``--config`` file that does not exist is a usage error, not a traceback from deep in the run.
- A user error inside ``main`` (a missing file, a bad value, a bad checkpoint: ``OSError`` or
  ``ValueError``) prints one ``error:`` line and exits 2; ``VLM3R_TRACEBACK=1`` shows the traceback.

Launchers import the library inside ``main`` (the one place in the project that does): ``--help``
and flag errors then answer without importing JAX, and a launcher that runs another one
(``launch.demo`` -> ``launch.eval``) does not define that one's absl flags until it needs them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags

HELP_ARGS = ("-h", "--help", "-help", "--helpshort", "--helpfull")


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
        if a == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _load_config(spec: str) -> Any:
    path, _, preset = spec.partition(":")
    mod_spec = importlib.util.spec_from_file_location("_cli_config", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.get_config(preset) if preset else module.get_config()


def unknown_key_message(config: Any, name: str, argv: list[str]) -> str | None:
    """'unknown config key ...; valid keys under ...: [...]' for the first override of a key that
    ``config`` lacks, else None."""
    for a in argv:
        if not a.startswith(f"--{name}."):
            continue
        path = a[len(name) + 3 :].split("=", 1)[0].split(".")
        node, where = config, name
        for part in path:
            keys = list(node.keys()) if hasattr(node, "keys") else None
            if keys is None or part not in keys:
                valid = sorted(keys) if keys is not None else []
                return (f"unknown config key {'.'.join(path)!r}: {where} has no field {part!r}; "
                        f"valid keys under {where}: {valid}")
            node, where = node[part], f"{where}.{part}"
    return None


def _usage_error(msg: str) -> None:
    print(f"error: {msg}\nPass --help to see the flags.", file=sys.stderr)
    sys.exit(2)


def _parser(config_flag: str | None) -> Callable[[list[str]], list[str]]:
    def parse(argv: list[str]) -> list[str]:
        try:
            return _parse(argv)
        except flags.Error as e:
            _usage_error(str(e))

    def _parse(argv: list[str]) -> list[str]:
        if any(a in HELP_ARGS for a in argv[1:]):
            app.usage(shorthelp=False, writeto_stdout=True, exitcode=0)
        spec = _flag_value(argv, config_flag) if config_flag is not None else None
        if spec is not None and not os.path.isfile(path := spec.partition(":")[0]):
            raise flags.Error(f"--{config_flag}: config file {path!r} does not exist "
                              "(see configs/ for the available ones)")
        try:
            return flags.FLAGS(argv)
        except (AttributeError, KeyError) as e:  # ml_collections on an unknown --config.x key
            msg = None
            if spec is not None:
                try:
                    msg = unknown_key_message(_load_config(spec), config_flag, argv)
                except Exception:  # noqa: BLE001 - only for a better message; fall back to the original
                    msg = None
            raise flags.Error(msg or f"bad --{config_flag} override: {e}") from e

    return parse


def run(main: Callable[[list[str]], Any], config_flag: str | None = "config") -> None:
    """``app.run(main)`` with the behaviour in the module docstring."""

    def guarded(argv: list[str]) -> Any:
        try:
            return main(argv)
        except (OSError, ValueError) as e:
            if os.environ.get("VLM3R_TRACEBACK"):
                raise
            print(f"error: {e}\n(set VLM3R_TRACEBACK=1 to see the traceback)", file=sys.stderr)
            sys.exit(2)

    app.run(guarded, flags_parser=_parser(config_flag))
