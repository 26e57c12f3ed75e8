"""The toy training job of ``toy_train.py`` on a (data=2, fsdp=2, tensor=2) mesh, as one process
with 8 CPU devices or as one of several processes with 8/N devices each (run by
tests/test_multihost.py).

usage: python tests/multihost_train.py WORKDIR STEPS OUT_JSON PROCESS_ID NUM_PROCESSES PORT [PREEMPT_AT]

PREEMPT_AT: process 0 sends itself SIGTERM after that step; every process must then checkpoint
and stop together (the loop agrees on the stop across processes).
"""

import json
import os
import signal
import sys

N_DEVICES = 8
ACCUM, GLOBAL_ROWS, SEQ = 2, 16, 6

if __name__ == "__main__":
    nproc = int(sys.argv[5])
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={N_DEVICES // nproc}"

import grain  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def global_batch_rows(i: int) -> dict:
    """The whole global batch of step ``i`` ([GLOBAL_ROWS, SEQ]) as a single process sees it."""
    rng = np.random.default_rng(int(i))
    ids = rng.integers(0, 11, (GLOBAL_ROWS, SEQ)).astype(np.int32)
    labels = ids.copy()
    labels[:, : int(rng.integers(1, 4))] = -100
    return {"input_ids": ids, "labels": labels}


def local_rows(batch: dict, pid: int, nproc: int) -> dict:
    """Process ``pid``'s share: its contiguous slice of every micro-batch (the layout
    :func:`vlm3r_jax.train.distributed.global_batch` assembles back into the global batch)."""

    def one(x):
        m = x.reshape((ACCUM, GLOBAL_ROWS // ACCUM) + x.shape[1:])
        per = m.shape[1] // nproc
        return m[:, pid * per:(pid + 1) * per].reshape((-1,) + x.shape[1:])

    return {k: one(v) for k, v in batch.items()}


def main(workdir: str, steps: int, out_json: str, pid: int = 0, nproc: int = 1, port: int = 0,
         preempt_at: int = 0) -> None:
    from vlm3r_jax.train import distributed

    if nproc > 1:
        distributed.initialize_from_env(coordinator_address=f"localhost:{port}", num_processes=nproc,
                                        process_id=pid)
    import jax
    import toy_train
    from flax import nnx

    from vlm3r_jax.models.lora import LoRAConfig, attach_lora
    from vlm3r_jax.train.loop import train

    assert jax.process_count() == nproc and jax.device_count() == N_DEVICES, (jax.process_count(), jax.devices())
    cfg = toy_train.config(steps)
    cfg.mesh.shape = {"data": 2, "fsdp": 2, "tensor": 2}
    cfg.train.grad_accum_steps = ACCUM
    cfg.train.eval_every = 1
    cfg.train.save_every = 3  # few collective saves keep the test fast; step 3 is the preemption point
    cfg.train.async_checkpoint = False
    model = toy_train.ToyLM(nnx.Rngs(0))
    attach_lora(model, LoRAConfig(rank=2, alpha=4.0, dropout=0.1, targets=("up_proj",)), rngs=nnx.Rngs(1))
    ds = grain.MapDataset.range(10_000).map(lambda i: local_rows(global_batch_rows(i), pid, nproc))
    def hook(step, _model):
        if pid == 0 and step == preempt_at:
            os.kill(os.getpid(), signal.SIGTERM)  # like a TPU maintenance event on one worker
        return {}

    res = train(cfg, workdir, model, toy_train.loss_fn, iter(ds.to_iter_dataset()), eval_hook=hook, progress=False)
    fusion = np.asarray(distributed.to_host(res.state.params["fusion"]["kernel"][...]))
    with open(out_json, "w") as f:
        json.dump({"losses": {r["step"]: r["loss"] for r in res.history}, "process_count": jax.process_count(),
                   "preempted": res.preempted, "last_step": res.last_step,
                   "fusion_kernel": fusion.tolist()}, f)


if __name__ == "__main__":
    a = sys.argv
    main(a[1], int(a[2]), a[3], *(int(x) for x in a[4:8]))
