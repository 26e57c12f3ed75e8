"""AOT compile of the train step: the local 8-CPU mesh in-process, a TPU slice (v5p-8) through
libtpu in a subprocess when libtpu is available, and the error messages."""

import json
import os
import subprocess
import sys

import jax
import pytest
from jax.sharding import PartitionSpec

from configs.qwen2_tiny_lora_aot import get_config
from vlm3r_jax.train import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(layers=1):
    c = get_config()
    c.model.num_layers = layers
    c.mesh.shape = {"data": 2, "fsdp": 2, "tensor": 2}
    return c


def test_compile_local_mesh_and_memory_report():
    cfg = _tiny()
    cfg.model.remat = "full"
    res = aot.compile_train_step(cfg, "cpu")
    assert res.as_dict()["remat"] == "full"  # the report names the policy the step was built with
    assert res.num_devices == 8 and res.mesh_shape == {"data": 2, "fsdp": 2, "tensor": 2}
    m = res.memory
    assert m["argument_bytes"] > 0 and m["total_bytes"] >= m["argument_bytes"] - m["alias_bytes"]
    # LoRA on q,k,v,o,gate,up,down of 1 layer: r * (in + out) each
    d, f, kv, r = 32, 64, 2 * 8, 4
    want = r * ((d + d) + 2 * (d + kv) + (d + d) + 2 * (d + f) + (f + d))
    assert res.trainable_params == want
    assert res.frozen_params > 0 and res.flops_per_step > 0
    # the donated train state is sharded as the logical rules say: LoRA A of q [layers, embed, lora_rank]
    state_in = res.compiled.input_shardings[0][0]
    specs = {tuple(str(p) for p in path): s.spec for path, s in jax.tree_util.tree_flatten_with_path(state_in)[0]}
    q_a = [v for k, v in specs.items() if any("q" == p.strip("[]'.") for p in k) and any("lora_a" in p for p in k)]
    assert q_a and q_a[0] == PartitionSpec(None, "fsdp", None), specs  # [layers, embed, lora_rank]
    assert "total" in res.summary()


def test_unknown_topology_and_missing_libtpu(monkeypatch):
    with pytest.raises(ValueError, match="v5p-64"):
        aot.topology_devices("v9x-3")
    monkeypatch.setenv("TPU_LIBRARY_PATH", "")
    monkeypatch.setattr(aot.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="libtpu==0.0.42"):
        aot.topology_devices("v5p-8")
    with pytest.raises(ValueError, match="qwen2_lora"):
        aot.get_model_builder("nope")


def test_compile_for_tpu_topology_without_tpu(tmp_path):
    env = _libtpu_env()
    out = tmp_path / "v5p8.json"
    r = subprocess.run(
        [sys.executable, "-m", "launch.aot_compile", "--config", os.path.join(ROOT, "configs/qwen2_tiny_lora_aot.py"),
         "--topology", "v5p-8", "--config.model.num_layers=1", "--json_out", str(out),
         "--dump_hlo", str(tmp_path / "h.txt")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["num_devices"] == 4 and rep["mesh"]["fsdp"] == 4
    assert 0 < rep["memory_bytes"]["total_bytes"] < rep["hbm_bytes"]
    assert "of 95 GiB HBM" in r.stdout
    # attention_impl="auto" resolved for the TPU target: the Pallas splash kernel, forward and backward
    assert (tmp_path / "h.txt").read_text().count("tpu_custom_call") >= 2


def _libtpu_env():
    if aot.libtpu_path() is None:
        pytest.skip("libtpu not installed (pip install 'libtpu==0.0.42.*' or set TPU_LIBRARY_PATH)")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = ROOT
    return env


def test_compile_for_two_slices_over_dcn(tmp_path):
    """Two v5e-4 slices: data parallel across the slices (mesh.dcn_data), FSDP inside each."""
    env = _libtpu_env()
    out = tmp_path / "2xv5e4.json"
    r = subprocess.run(
        [sys.executable, "-m", "launch.aot_compile", "--config", os.path.join(ROOT, "configs/qwen2_tiny_lora_aot.py"),
         "--topology", "v5e-4", "--num_slices", "2", "--config.model.num_layers=1", "--json_out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["topology"] == "2xv5e-4" and rep["num_devices"] == 8
    assert rep["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    # the hybrid mesh puts the two slices on the two rows of the data axis
    probe = ("from configs.qwen2_tiny_lora_aot import get_config; from vlm3r_jax import sharding; "
             "from vlm3r_jax.train import aot; c = get_config().mesh; c.dcn_data = 2; "
             "m = sharding.mesh_from_config(c, aot.topology_devices('v5e-4', 2)); "
             "print([sorted({d.slice_index for d in row.flat}) for row in m.devices])")
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.stdout.strip().splitlines()[-1] == "[[0], [1]]", r.stderr[-2000:]


def test_micro_batch_that_does_not_split_is_refused():
    cfg = _tiny()
    cfg.data.global_batch = 6  # 2 grad-accumulation micro-batches of 3 rows over data x fsdp = 4
    with pytest.raises(ValueError, match="micro-batch of 'input_ids' of 3 rows does not divide over the 4"):
        aot.compile_train_step(cfg, "cpu")
    with pytest.raises(ValueError, match="mesh.dcn_data x mesh.dcn_fsdp = 1 but --num_slices is 2|needs a TPU"):
        aot.compile_train_step(cfg, "cpu", num_slices=2)
