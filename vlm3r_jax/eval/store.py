"""The per-sample JSONL of an evaluation run, and what produced it.

``samples.jsonl`` gets one line per answered record, each batch's lines written by :class:`Appender`
with a single ``write`` on an O_APPEND descriptor (then fsync), so a crash loses at most the batch in
flight (on an object store, ``gs://...``, each write republishes the whole object: the same guarantee,
one object write per batch);
:func:`read_samples` drops (and cuts) a torn last line. ``run_identity.json`` records the
predictor and checkpoint; :func:`stale_reason` refuses to resume another run's samples.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from vlm3r_jax import storage

IDENTITY_FILE = "run_identity.json"


def stale_reason(workdir: str, identity: Mapping[str, Any], done: Mapping[str, dict]) -> str | None:
    """Why the samples already in ``workdir`` cannot be resumed by this run (None: they can)."""
    if not done:
        return None
    others = {d.get("predictor") for d in done.values()} - {identity["predictor"]}
    if others:
        return f"its samples came from predictor {sorted(map(str, others))}, not {identity['predictor']!r}"
    path = storage.join(workdir, IDENTITY_FILE)
    if storage.exists(path):
        try:
            before = json.loads(storage.read_text(path))
        except (OSError, json.JSONDecodeError):
            return f"{path} is unreadable"
        changed = sorted(k for k in set(before) | set(identity) if before.get(k) != identity.get(k))
        if changed:
            return f"the run that wrote its samples differs in {changed} (e.g. the checkpoint was trained further)"
    return None


def read_samples(path: str, repair: bool = True) -> dict[str, dict[str, Any]]:
    """id -> latest line of a per-sample JSONL. A torn final line (crash mid-write) is dropped and,
    with ``repair``, cut from the file so appends continue on a clean line."""
    out: dict[str, dict[str, Any]] = {}
    if not storage.exists(path):
        return out
    data = storage.read_bytes(path)
    good_end = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # no newline: torn last line
        line = data[pos:nl]
        pos = nl + 1
        if not line.strip():
            good_end = pos
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}: corrupt line at byte {pos - len(line) - 1} ({e.msg}); delete that line to resume"
            ) from e
        out[str(rec["id"])] = rec
        good_end = pos
    if repair and good_end < len(data):
        storage.write_atomic(path, data[:good_end])
    return out


class Appender:
    """Appends one JSON line per sample (:class:`vlm3r_jax.storage.LineLog`: one ``os.write`` on an
    O_APPEND descriptor + fsync locally, a whole-object rewrite on a bucket, so the runner hands
    it a whole batch at once with :meth:`write_many`)."""

    def __init__(self, path: str, fsync: bool = True):
        self._log = storage.LineLog(path, fsync=fsync)

    def write(self, obj: Mapping[str, Any]) -> None:
        self.write_many([obj])

    def write_many(self, objs: Sequence[Mapping[str, Any]]) -> None:
        """All of ``objs`` as one write (nothing for none): one object write per batch on a bucket."""
        if objs:
            self._log.write("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs))

    def close(self) -> None:
        self._log.close()


class NullAppender:
    """What non-writer processes of a multi-host run use."""

    def write(self, obj: Mapping[str, Any]) -> None:
        pass

    def write_many(self, objs: Sequence[Mapping[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass
