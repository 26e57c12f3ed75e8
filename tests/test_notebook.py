"""notebooks/quickstart.ipynb runs top to bottom (tiny random model) so it never rots."""

from __future__ import annotations

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # never pick up a locally trained demo model: the test must not depend on one
    monkeypatch.setenv("VLM3R_CHECKPOINT", str(tmp_path / "no_checkpoint"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("XLA_FLAGS", "")  # one CPU device is enough here
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
    # opened from notebooks/, as a reader would: the notebook finds the checkout itself
    monkeypatch.delenv("VLM3R_REPO", raising=False)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}})
    client.execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "tiny random model" in outputs and "context used" in outputs and "after 16 frames" in outputs
    assert f"repository: {ROOT}" in outputs and "NO TRAINED CHECKPOINT" in outputs


def test_quickstart_notebook_is_committed_with_its_outputs():
    """A reader on a code host sees the pictures and answers without running anything."""
    nbformat = pytest.importorskip("nbformat")
    path = os.path.join(ROOT, "notebooks", "quickstart.ipynb")
    nb = nbformat.read(path, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
    assert os.path.getsize(path) < 1_000_000
