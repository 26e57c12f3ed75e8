"""One process of the multi-host Grain pipeline test (run by tests/test_multihost_pipeline.py):
4 CPU devices in total, as 1 process or split over NUM_PROCESSES processes (jax.distributed).

usage: python tests/multihost_pipeline.py DATA_DIR OUT_JSON PROCESS_ID NUM_PROCESSES PORT PHASE

The pipeline is built with ``make_iterator`` and NO ``shard=`` argument, so each process reads
the shard given by jax.process_index()/process_count(). PHASE: ``all`` reads every batch;
``first`` reads FIRST_BATCHES batches and saves this process's iterator state next to OUT_JSON;
``second`` restores that state in a fresh process and reads the rest. For every batch the JSON
gets this host's record ids, its length bucket before the hosts agreed on one, and the global
batch assembled on a (data=4) mesh, read back to host memory.
"""

import json
import os
import sys

N_DEVICES, GLOBAL_BATCH, FIRST_BATCHES = 4, 4, 1

if __name__ == "__main__":
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={N_DEVICES // int(sys.argv[4])}"


def pipeline_config():
    from data_pipeline.pipeline import PipelineConfig

    return PipelineConfig(num_frames=2, siglip_size=16, geometry_size=None, length_buckets=(48, 64, 96, 128, 192, 256),
                          video_tokens_per_frame=1, worker_count=0, batch_size=GLOBAL_BATCH, shuffle=False,
                          num_epochs=1, drop_remainder=True)


def main(data: str, out_json: str, pid: int, nproc: int, port: int, phase: str) -> None:
    from vlm3r_jax.train import distributed

    if nproc > 1:
        distributed.initialize_from_env(coordinator_address=f"localhost:{port}", num_processes=nproc, process_id=pid)
    import jax

    from data_pipeline.pipeline import make_iterator, to_global_batch
    from data_pipeline.sources import LlavaJsonSource
    from data_pipeline.tokenizer import QwenTokenizer
    from vlm3r_jax import sharding

    assert jax.process_count() == nproc and jax.device_count() == N_DEVICES
    tok = QwenTokenizer.from_dir(os.path.join(data, "tok"))
    source = LlavaJsonSource(os.path.join(data, "train.jsonl"), data)
    it = make_iterator(source, tok, pipeline_config(), log_fn=lambda s: None)
    state_file = f"{out_json}.state"
    if phase == "second":
        with open(state_file) as f:
            it.set_state(json.load(f))
    mesh = sharding.make_mesh({"data": N_DEVICES})
    batches = []
    for i, batch in enumerate(it):
        g = to_global_batch(batch, mesh)
        assert g["input_ids"].sharding.spec[0] == "data"
        batches.append({
            "ids": batch["id"].tolist(),
            "local_length": it.last_local_length,
            "global": {k: distributed.to_host(g[k]).tolist()
                       for k in ("input_ids", "labels", "attention_mask", "placeholder_index", "frames")},
        })
        if phase == "first" and i + 1 == FIRST_BATCHES:
            with open(state_file, "w") as f:
                json.dump(it.get_state(), f)
            break
    with open(out_json, "w") as f:
        json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(), "batches": batches}, f)


if __name__ == "__main__":
    a = sys.argv
    main(a[1], a[2], int(a[3]), int(a[4]), int(a[5]), a[6])
