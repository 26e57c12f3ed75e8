"""What every launcher shares: ``run(main)`` is ``app.run(main)`` with the behaviour users expect
of a command.

- ``--help`` / ``-h`` print the help, then every config field with its default and meaning
  (:mod:`launch.config_help`), and exit 0 (absl exits 1).
- One flag style: ``--config.field=value`` for what a config holds, absl ``--snake_case`` flags for
  the rest. ``legacy`` spellings of older releases (``--max-new-tokens 8``, the demo's ``--set k=v``)
  are rewritten to the new ones with a deprecation note printed once.
- An unknown ``--config.some.key`` names the key and lists the valid ones at the deepest level that
  exists (ml_collections raises a bare ``AttributeError`` that absl does not catch).
- A ``--config`` file that does not exist, an unknown flag or a value of the wrong type is one
  ``error:`` line naming the flag (and the field's type and default) with exit status 2.
- A user error inside ``main`` (a missing file, a bad value, a bad checkpoint: ``OSError`` or
  ``ValueError``) prints one ``error:`` line and exits 2; ``VLM3R_TRACEBACK=1`` shows the traceback.

Launchers import the library inside ``main`` (the one place in the project that does): ``--help``
and flag errors then answer without importing JAX, and a launcher that runs another one
(``launch.demo`` -> ``launch.eval``) does not define that one's absl flags until it needs them.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags

_LEGACY_NOTED: list[bool] = []  # non-empty once the deprecation note was printed

HELP_ARGS = ("-h", "--help", "-help", "--helpshort", "--helpfull")


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
        if a == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_spec(spec: str) -> str:
    """A ``configs/x.py[:preset]`` spec that also works outside the repository root."""
    path, colon, preset = spec.partition(":")
    if not os.path.isfile(path) and os.path.isfile(os.path.join(ROOT, path)):
        path = os.path.join(ROOT, path)
    return f"{path}{colon}{preset}"


def _load_config(spec: str) -> Any:
    path, _, preset = resolve_spec(spec).partition(":")
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


def usage_error(msg: str) -> None:
    print(f"error: {msg} (pass --help to see the flags)", file=sys.stderr)
    sys.exit(2)


def rewrite_legacy(argv: list[str], legacy: dict[str, str]) -> list[str]:
    """``argv`` with old spellings replaced: ``legacy`` maps ``--old`` to ``--new`` (``--old V`` and
    ``--old=V`` -> ``--new=V``); a new name ending in ``.`` is a prefix (``--set k=v`` ->
    ``--config.k=v``). One deprecation note per run on stderr."""
    out, used, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        name, eq, value = a.partition("=")
        if name in legacy:
            if not eq and i + 1 < len(argv):
                i, value = i + 1, argv[i + 1]
            new = legacy[name]
            out.append(f"{new}{value}" if new.endswith(".") else f"{new}={value}")
            used.append(f"{name} -> {new}{'KEY=VALUE' if new.endswith('.') else ''}")
        else:
            out.append(a)
        i += 1
    if used and not _LEGACY_NOTED:
        # once per process, also across launchers the demo runs in-process; a process-wide flag,
        # not an environment variable, so it never reaches (and silences) a child process
        _LEGACY_NOTED.append(True)
        print(f"note: deprecated flag spelling, still accepted in this release: {', '.join(dict.fromkeys(used))}",
              file=sys.stderr)
    return out


def legacy_help(legacy: dict[str, str]) -> str:
    return "Deprecated spellings (accepted for one more release): " + ", ".join(
        f"{old} -> {new}{'KEY=VALUE' if new.endswith('.') else ''}" for old, new in legacy.items())


def print_config_fields(argv: list[str], config_flag: str, default_spec: str | None) -> None:
    """The ``--help`` listing of the config named on the command line (or ``default_spec``)."""
    from launch import config_help

    spec = _flag_value(argv, config_flag) or default_spec
    if not spec or not os.path.isfile(resolve_spec(spec).partition(":")[0]):
        return
    print("\n" + config_help.describe(_load_config(spec), resolve_spec(spec).partition(":")[0], config_flag))
    if spec != _flag_value(argv, config_flag):
        print(f"(the fields of {spec}; pass --{config_flag}=FILE --help for another config)")


def _value_message(e: Exception, argv: list[str], config_flag: str | None, spec: str | None) -> str:
    """'--config.train.steps=abc: train.steps takes an int (default 1200)' for a wrong-type override."""
    text = str(e).splitlines()[0] if str(e) else repr(e)
    m = re.search(rf"--{config_flag}\.([\w.]+)", text) if config_flag else None
    if m is None or spec is None:
        return text
    try:
        value = _load_config(spec)
        for part in m[1].split("."):
            value = value[part]
    except Exception:  # noqa: BLE001 - only for a better message
        return text
    given = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{config_flag}.{m[1]}=")), "?")
    kind = type(value).__name__
    return f"--{config_flag}.{m[1]}={given}: {m[1]} takes a{'n' if kind[0] in 'aeiou' else ''} {kind} (default {value!r})"


def _parser(config_flag: str | None, help_config: str | None = None, legacy: dict[str, str] | None = None,
            fv: flags.FlagValues | None = None, usage: Callable[[], None] | None = None,
            more_help: tuple[tuple[str, str], ...] = ()) -> Callable[[list[str]], list[str]]:
    fv = flags.FLAGS if fv is None else fv

    def parse(argv: list[str]) -> list[str]:
        argv = argv[:1] + rewrite_legacy(argv[1:], legacy or {})
        try:
            return _parse(argv)
        except flags.Error as e:
            msg = str(e).splitlines()[0] if str(e) else repr(e)
            for name, default in ((config_flag, help_config), *more_help) if config_flag else ():
                if f"--{name}." in msg:
                    msg = _value_message(e, argv, name, _flag_value(argv, name) or default)
            usage_error(msg)

    def _parse(argv: list[str]) -> list[str]:
        if any(a in HELP_ARGS for a in argv[1:]):
            if usage is None:
                app.usage(shorthelp=False, writeto_stdout=True)
            else:
                usage()
            if legacy:
                print("\n" + legacy_help(legacy))
            if config_flag is not None:
                print_config_fields(argv, config_flag, help_config)
            for name, default in more_help:
                print_config_fields(argv, name, default)
            sys.exit(0)
        spec = _flag_value(argv, config_flag) if config_flag is not None else None
        if spec is not None and not os.path.isfile(path := spec.partition(":")[0]):
            raise flags.Error(f"--{config_flag}: config file {path!r} does not exist "
                              "(see configs/ for the available ones)")
        try:
            return fv(argv)
        except (AttributeError, KeyError) as e:  # ml_collections on an unknown --config.x key
            msg = None
            for name in (config_flag, *(n for n, _ in more_help)) if config_flag else ():
                try:
                    msg = msg or unknown_key_message(_load_config(_flag_value(argv, name)), name, argv)
                except Exception:  # noqa: BLE001 - only for a better message; fall back to the original
                    pass
            raise flags.Error(msg or f"bad --{config_flag} override: {e}") from e

    return parse


def parse_local(argv: list[str], define: Callable[[flags.FlagValues, list[str]], None], doc: str,
                config_flag: str | None = "config", legacy: dict[str, str] | None = None,
                more_configs: tuple[str, ...] = ()) -> tuple[flags.FlagValues, list[str]]:
    """Parse ``argv`` (no program name) into a launcher's own ``FlagValues`` with the same help,
    legacy spellings and one-line errors as :func:`run`; for launchers whose ``main(argv)`` is also
    called from Python (tests, the demo). ``define(fv, full_argv)`` defines the flags; config flags
    must get ``sys_argv=full_argv`` (ml_collections finds its ``--config.x`` overrides there).
    ``more_configs`` names further config flags (the demo's ``--data``). Returns the flags and the
    remaining arguments."""
    argv = rewrite_legacy(argv, legacy or {})
    fv = flags.FlagValues()
    probe = flags.FlagValues()
    define(probe, ["prog"])
    defaults = {n: probe[n].default_as_str.strip("'\"") for n in ((config_flag, *more_configs) if config_flag else ())}
    for name, default in defaults.items():
        if _flag_value(argv, name) is None:
            argv = [f"--{name}={default}", *argv]  # the overrides need a --config on the command line
    spec = _flag_value(argv, config_flag) if config_flag else None
    full = ["prog", *argv]
    define(fv, full)

    def usage() -> None:
        print(doc)
        print(fv.get_help())

    more = tuple((n, defaults[n]) for n in more_configs)
    return fv, _parser(config_flag, spec, legacy, fv, usage, more)(full)[1:]


def run(main: Callable[[list[str]], Any], config_flag: str | None = "config", help_config: str | None = None,
        legacy: dict[str, str] | None = None) -> None:
    """``app.run(main)`` with the behaviour in the module docstring; ``help_config`` is the config
    whose fields ``--help`` lists when ``--config`` is not given."""

    def guarded(argv: list[str]) -> Any:
        try:
            return main(argv)
        except (OSError, ValueError) as e:
            if os.environ.get("VLM3R_TRACEBACK"):
                raise
            print(f"error: {e}\n(set VLM3R_TRACEBACK=1 to see the traceback)", file=sys.stderr)
            sys.exit(2)

    app.run(guarded, flags_parser=_parser(config_flag, help_config, legacy))
