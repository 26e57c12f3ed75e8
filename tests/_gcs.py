"""The ``gcs`` fixture (registered in conftest.py): a GCS emulator (tests/gcs_emulator.py) in a
subprocess for one test module, with etils.epath/gcsfs (``STORAGE_EMULATOR_HOST``) and Orbax's
tensorstore (``TENSORSTORE_GCS_HTTP_URL``) pointed at it; the bucket ``BUCKET`` exists. Skips
without the ``gcs`` extra (``pip install gcsfs gcp-storage-emulator``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "vlm3r-test"


def start_emulator(extra_env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """(process, URL) of a fresh in-memory emulator holding the empty bucket ``BUCKET``, once it
    accepts connections (``extra_env``: e.g. tests/gcs_emulator.py's latency and request log)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "gcs_emulator.py"), "start", "--host", "127.0.0.1",
                             "--port", str(port), "--in-memory", "--default-bucket", BUCKET],
                            env={**os.environ, **(extra_env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        proc.wait(timeout=10)
        raise RuntimeError(f"the GCS emulator (tests/gcs_emulator.py) accepted no connection on port {port} "
                           f"within ~10 s (exit status {proc.returncode}); run it by hand to see why")
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def gcs():
    pytest.importorskip("gcsfs")
    pytest.importorskip("gcp_storage_emulator")
    proc, url = start_emulator()
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_CLOUD_PROJECT": "test",
           "GCE_METADATA_HOST": "127.0.0.1:1", "JAX_PLATFORMS": "cpu"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
