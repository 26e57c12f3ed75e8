"""Reading a checkpoint's JSON config files (config.json, adapter_config.json, ...) with one-line
errors: a file that is not valid JSON, or valid JSON that is not an object (a list, a number),
is a :class:`CheckpointError` naming the file, never a ``TypeError`` further down."""

from __future__ import annotations

import json
from typing import Any

from vlm3r_jax.convert.errors import CheckpointError


def read_json_object(path: str) -> dict[str, Any]:
    """The JSON object in ``path``; FileNotFoundError when it is absent."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-download or re-export it") from e
    except RecursionError as e:
        raise CheckpointError(f"{path}: JSON nested too deeply; not a config file") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{path} holds a JSON {type(d).__name__}, not an object of settings; "
                              "re-download or re-export it")
    return d
