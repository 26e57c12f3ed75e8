"""Multi-process training on localhost: 2 JAX processes x 4 CPU devices (jax.distributed, gloo)
against one process with 8 devices, same (data=2, fsdp=2, tensor=2) mesh and global batches.

One run covers: global batch assembly from per-process rows, multi-process parameter placement,
a SIGTERM on process 0 only that stops BOTH processes with a checkpoint (collective save, Grain
state per process), and a resume in a fresh pair of processes. The loss sequence (steps 1-3 from
the preempted run, 4-5 from the resumed one) and the final trainable weights must match the
single-process run.
"""

import json

import numpy as np
import pytest
from _procs import launch, wait_all

from vlm3r_jax.train import distributed

STEPS, PREEMPT_AT = 5, 3


def _launch(workdir, out, pid, nproc, port, preempt_at=0):
    return launch("multihost_train.py", workdir, STEPS, out, pid, nproc, port, preempt_at)


def _pair(workdir, tag, tmp_path, preempt_at=0):
    portpicker = pytest.importorskip("portpicker")
    port = portpicker.pick_unused_port()
    outs = [tmp_path / f"{tag}{i}.json" for i in range(2)]
    return [_launch(workdir, outs[i], i, 2, port, preempt_at) for i in range(2)], outs


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_two_processes_match_one_process_with_preemption_and_resume(tmp_path):
    single_out = tmp_path / "single.json"
    single = _launch(tmp_path / "single", single_out, 0, 1, 0)
    multi, first = _pair(tmp_path / "multi", "first", tmp_path, preempt_at=PREEMPT_AT)
    wait_all([single] + multi)
    resumed, second = _pair(tmp_path / "multi", "second", tmp_path)
    outs = wait_all(resumed)
    assert "resumed from" in outs[0]

    ref = _load(single_out)
    assert ref["process_count"] == 1 and len(ref["losses"]) == STEPS
    want = np.array([ref["losses"][str(s)] for s in range(1, STEPS + 1)])
    for pid in range(2):
        a, b = _load(first[pid]), _load(second[pid])
        assert a["process_count"] == 2 and a["preempted"] and a["last_step"] == PREEMPT_AT, a
        assert not b["preempted"] and b["last_step"] == STEPS
        got = {**a["losses"], **b["losses"]}
        got = np.array([got[str(s)] for s in range(1, STEPS + 1)])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        np.testing.assert_allclose(np.array(b["fusion_kernel"]), np.array(ref["fusion_kernel"]), rtol=0, atol=1e-5)


def test_distributed_settings_from_env():
    assert distributed.distributed_settings({}) is None
    kw = distributed.distributed_settings(
        {"VLM3R_COORDINATOR_ADDRESS": "10.0.0.1:1234", "VLM3R_NUM_PROCESSES": "4", "VLM3R_PROCESS_ID": "2",
         "VLM3R_LOCAL_DEVICE_IDS": "0,1"})
    assert kw == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2,
                  "local_device_ids": [0, 1]}
    kw = distributed.distributed_settings(
        {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"})
    assert kw["num_processes"] == 2
    # one process is a plain single-process run
    assert distributed.distributed_settings(
        {"VLM3R_COORDINATOR_ADDRESS": "h:1", "VLM3R_NUM_PROCESSES": "1", "VLM3R_PROCESS_ID": "0"}) is None
    with pytest.raises(ValueError, match="VLM3R_PROCESS_ID"):
        distributed.distributed_settings({"VLM3R_COORDINATOR_ADDRESS": "h:1", "VLM3R_NUM_PROCESSES": "2"})
    # SLURM with several tasks: jax.distributed detects the rest itself
    assert distributed.distributed_settings({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}) == {}
    assert distributed.distributed_settings({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None


def test_single_process_helpers_fall_back(tmp_path):
    import jax

    from vlm3r_jax import sharding

    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    x = np.arange(2 * 8 * 3).reshape(2, 8, 3)
    g = distributed.global_batch({"x": x}, mesh, batch_axis=1)["x"]
    assert g.shape == (2, 8, 3) and g.sharding.spec[1] == ("data", "fsdp")
    np.testing.assert_array_equal(distributed.to_host(g), x)
    assert distributed.any_process(True) and not distributed.any_process(False)
    assert distributed.initialize_from_env({}) is (jax.process_count() > 1)
