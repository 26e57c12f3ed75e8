"""Per-host sharding of the Grain pipeline on localhost: 2 JAX processes (jax.distributed) each
read the shard of jax.process_index()/process_count() (no explicit ``shard=``). Their streams are
disjoint and cover the dataset; the global batch assembled across processes equals the one a
single process reading everything builds (same rows, same length bucket even when the hosts'
own buckets differ); a pair restarted from the saved iterator states continues exactly."""

import json
import os

import numpy as np
import pytest
from _procs import launch, wait_all
from test_tokenizer import build_small_tokenizer

N_RECORDS, GLOBAL_BATCH, NPROC = 12, 4, 2


def _write_data(root):
    from data_pipeline.synthetic_video import write_barcode_video

    build_small_tokenizer(os.path.join(root, "tok"))
    with open(os.path.join(root, "train.jsonl"), "w") as f:
        for i in range(N_RECORDS):
            write_barcode_video(os.path.join(root, f"v{i}.mp4"), 5 + i, size=(48, 64), gop=4)
            words = " ".join(["the"] * (1 + 12 * i))  # ~1 token a word: rows spread over the buckets
            f.write(json.dumps({"id": f"r{i}", "video": f"v{i}.mp4", "conversations": [
                {"from": "human", "value": f"<image>\nHow many {words}?"}, {"from": "gpt", "value": str(i)}]}) + "\n")


def _launch(data, out, pid, nproc, port, phase):
    return launch("multihost_pipeline.py", data, out, pid, nproc, port, phase)


def _pair(data, tag, tmp_path, phase):
    portpicker = pytest.importorskip("portpicker")
    port = portpicker.pick_unused_port()
    outs = [tmp_path / f"{tag}{i}.json" for i in range(NPROC)]
    return [_launch(data, outs[i], i, NPROC, port, phase) for i in range(NPROC)], outs


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_two_hosts_shard_by_process_and_resume(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write_data(str(data))
    single_out = tmp_path / "single.json"
    single = _launch(data, single_out, 0, 1, 0, "all")
    first, first_outs = _pair(data, "first", tmp_path, "first")
    wait_all([single] + first)
    # the restart: a fresh pair of processes restores each host's saved iterator state
    for i in range(NPROC):
        os.replace(f"{first_outs[i]}.state", tmp_path / f"second{i}.json.state")
    second, second_outs = _pair(data, "second", tmp_path, "second")
    wait_all(second)

    ref = _load(single_out)
    assert ref["process_count"] == 1
    want = ref["batches"]
    assert len(want) == N_RECORDS // GLOBAL_BATCH
    hosts = []
    for i in range(NPROC):
        a, b = _load(first_outs[i]), _load(second_outs[i])
        assert a["process_count"] == NPROC and a["process_index"] == i
        assert len(a["batches"]) == 1 and len(b["batches"]) == len(want) - 1
        hosts.append(a["batches"] + b["batches"])

    # disjoint streams that together cover the dataset
    ids = [[x for bt in h for x in bt["ids"]] for h in hosts]
    assert set(ids[0]).isdisjoint(ids[1])
    assert sorted(ids[0] + ids[1]) == sorted(f"r{i}" for i in range(N_RECORDS))
    assert all(len(bt["ids"]) == GLOBAL_BATCH // NPROC for h in hosts for bt in h)

    # host h holds rows h, h + 2, ... of the file; the global batch is host-major, so global row
    # r = (h, j) is row NPROC * j + h of the single process's batch
    local = GLOBAL_BATCH // NPROC
    perm = [NPROC * (r % local) + r // local for r in range(GLOBAL_BATCH)]
    differing_buckets = 0
    for k, ref_batch in enumerate(want):
        assert [x for h in hosts for x in h[k]["ids"]] == [ref_batch["ids"][p] for p in perm]
        differing_buckets += hosts[0][k]["local_length"] != hosts[1][k]["local_length"]
        for h in hosts:  # both processes see the same global batch
            assert h[k]["global"] == hosts[0][k]["global"]
        for key, got in hosts[0][k]["global"].items():
            np.testing.assert_array_equal(np.asarray(got), np.asarray(ref_batch["global"][key])[perm], err_msg=key)
    assert differing_buckets > 0  # the hosts had to agree on a length bucket
