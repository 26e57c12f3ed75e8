"""Runs ``gcp-storage-emulator`` (usage as its CLI: ``python tests/gcs_emulator.py start --port P
--in-memory``) with two fixes that make it look like real GCS to tensorstore (Orbax's GCS driver):
object generations are microsecond timestamps (the emulator stamps nanoseconds), and a media
download carries the ``x-goog-generation`` header (the emulator omits it; tensorstore then reports a
"Malformed StorageGeneration"). It also answers the ``moveTo`` call (copy, then delete) that gcsfs
makes for a rename: unanswered (501) gcsfs retries it for ~8 s per object before it falls back.

For measurements (bench/remote_video.py): ``GCS_EMULATOR_LATENCY_MS`` delays every request (a real
bucket answers in tens of ms, this in-memory one in well under one) and ``GCS_EMULATOR_LOG`` names a
file that gets one line per request (method, path, Range header)."""

import os
import re
import sys
import time
import types
from http import HTTPStatus

import gcp_storage_emulator.handlers.objects as objects
import gcp_storage_emulator.server as server

objects.time = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
objects.time.time_ns = lambda: time.time_ns() // 1000
_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    except Exception:  # noqa: BLE001 - missing object: the original handler answers 404
        pass
    return _download(request, response, storage, *args, **kwargs)


objects.download = _download_with_generation


def _move(request, response, storage, *args, **kwargs):
    request.params["dest_bucket_name"] = request.params["bucket_name"]  # moveTo stays in its bucket
    objects.copy(request, response, storage)
    if response.status == HTTPStatus.OK:
        storage.delete_file(request.params["bucket_name"], request.params["object_id"])


_MOVE_ROUTE = (rf"^{re.escape(server.settings.API_ENDPOINT)}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)"
               r"/moveTo/o/(?P<dest_object_id>.*[^/]+)$", {server.POST: _move})
server.HANDLERS = (_MOVE_ROUTE, *server.HANDLERS)  # before the plain object route, which would match too
_handle = server.Router.handle
_LATENCY_S = float(os.environ.get("GCS_EMULATOR_LATENCY_MS", "0")) / 1000
_LOG = os.environ.get("GCS_EMULATOR_LOG")


def _handle_measured(self, method):
    if _LATENCY_S:
        time.sleep(_LATENCY_S)
    if _LOG:
        h = self._request_handler
        with open(_LOG, "a") as f:
            f.write(f"{method} {h.path} {h.headers.get('Range', '-')}\n")
    return _handle(self, method)


server.Router.handle = _handle_measured

from gcp_storage_emulator.__main__ import main  # noqa: E402 - after the patch: its route table binds handlers

if __name__ == "__main__":
    sys.exit(main())
