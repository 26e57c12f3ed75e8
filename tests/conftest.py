"""Test-wide setup. The XLA flag must be set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Parity tests compare float32 against float32 references; keep XLA's matmuls exact.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
# Tests never reach the real Hugging Face Hub (a released config names its SigLIP tower by Hub id);
# tests/test_hub.py turns this off for its local stand-in server.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util  # noqa: E402

import pytest  # noqa: E402
from _gcs import gcs  # noqa: E402, F401 - the GCS emulator fixture, for every module that asks for it

HAS_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
# ../shared/golden beside the checkout (as CI lays it out), or $VLM3R_GOLDEN_DIR.
GOLDEN = os.environ.get("VLM3R_GOLDEN_DIR") or os.path.join(SHARED, "golden")


def pytest_collection_modifyitems(config, items):
    if HAS_TORCH:
        return
    skip = pytest.mark.skip(reason="torch/transformers not installed (pip install -e '.[test]')")
    for item in items:
        if "torch" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def golden_dir() -> str:
    """Path of ../shared/golden; tests that need it skip when it is absent."""
    if not os.path.isdir(GOLDEN):
        pytest.skip(f"golden data not found at {GOLDEN}")
    return GOLDEN
