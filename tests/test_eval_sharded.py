"""The model eval path: records through the Grain eval dataset (resume position = the JSONL),
batches padded and sharded over the 8 fake CPU devices, params placed by their logical axes;
the predictions and scores equal a 1-device run."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from test_eval_runner import make_bench, noisy_oracle
from test_tokenizer import build_small_tokenizer

from vlm3r_jax import sharding
from vlm3r_jax.eval import records as records_lib
from vlm3r_jax.eval import runner


def _tiny_handle(tmp_path_factory):
    from flax import nnx

    from configs import vlm3r_tiny
    from data_pipeline.tokenizer import QwenTokenizer
    from vlm3r_jax.infer.vlm3r_model import VLM3RModel
    from vlm3r_jax.models.vlm3r import VLM3R
    from vlm3r_jax.train.vlm3r_task import vlm3r_config

    tok = QwenTokenizer.from_dir(build_small_tokenizer(str(tmp_path_factory.mktemp("tok"))))
    m = vlm3r_tiny.model_config()
    m.llm.update(hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=48)
    m.vision.update(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2)
    m.geometry.update(enc_embed_dim=16, enc_depth=1, enc_num_heads=2, dec_embed_dim=16, dec_depth=1,
                      state_size=4, local_mem_size=4, dpt_feature_dim=8, dpt_last_dim=4, dpt_layer_dims=(4, 4, 4, 4))
    m.geometry_image_size = (32, 32)
    m.fusion.num_heads = 2
    vcfg = vlm3r_config(m, tok)
    # Random weights from numpy on the abstract model: flax's initializers compile one program
    # per parameter shape, ~40 s for this model on a busy 2-core CPU.
    graphdef, state = nnx.split(nnx.eval_shape(lambda: VLM3R(vcfg, rngs=nnx.Rngs(params=0, dropout=1))))
    rng = np.random.default_rng(0)

    def fill(v):
        x = v.get_value()
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return v.replace(jax.random.key(0))
        if not np.issubdtype(x.dtype, np.floating):
            return v.replace(np.zeros(x.shape, x.dtype))
        base = 1.0 if v.get_metadata().get("logical_axes") == ("norm",) else 0.0
        return v.replace(jax.numpy.asarray(base + 0.2 * rng.standard_normal(x.shape), x.dtype))

    state = jax.tree_util.tree_map(fill, state, is_leaf=lambda v: isinstance(v, nnx.Variable))
    return VLM3RModel(vcfg, nnx.merge(graphdef, state), tok, num_frames=2)


@pytest.fixture(scope="module")
def handle(tmp_path_factory):
    return _tiny_handle(tmp_path_factory)


def test_sharded_eval_matches_one_device(tmp_path, handle):
    from launch import eval as launch_eval
    from vlm3r_jax.eval.sharded import ShardedVLM3RPredictor

    data = str(tmp_path / "bench")
    info = make_bench(data, per_type=1)  # 10 answerable records + a missing video + 3 malformed
    recs = records_lib.load_records(data, "vsibench")

    # one device; batch 3 -> batches of 3, 3, 3, 1 (the last padded to 3 rows)
    one = ShardedVLM3RPredictor(handle, batch_size=3, mesh=sharding.make_mesh({"data": 1}, jax.devices()[:1]),
                                num_frames=2, length_buckets=(192, 256))
    assert one.rows == 3
    res1 = runner.run_eval(recs, one, str(tmp_path / "one"), 3, progress=False, print_table=False)

    # 8 devices through the launcher: a saved checkpoint, data=2 x fsdp=2 x tensor=2; batch 3 is
    # padded to 4 rows (the batch rule splits over data x fsdp), every last partial batch too
    ckpt = str(tmp_path / "ckpt")
    handle.save_pretrained(ckpt)
    from configs.eval_vsibench import get_config

    cfg = get_config()
    cfg.data_root, cfg.checkpoint, cfg.progress, cfg.batch_size = data, ckpt, False, 3
    cfg.num_frames, cfg.length_buckets, cfg.worker_count = 2, (192, 256), 0
    cfg.mesh.shape = {"data": 2, "fsdp": 2, "tensor": 2}
    built = []
    real = launch_eval.make_model_predictor

    def spy(c):
        built.append(real(c))
        return built[-1]

    launch_eval.make_model_predictor = spy
    try:
        res8 = launch_eval.run(cfg, str(tmp_path / "eight"))
    finally:
        launch_eval.make_model_predictor = real
    pred8 = built[0]
    assert isinstance(pred8, ShardedVLM3RPredictor) and pred8.rows == 4 and pred8.shards == 4
    # the parameters really are split by their logical axes
    specs = [x.sharding.spec for x in jax.tree_util.tree_leaves(pred8.params)]
    assert any("tensor" in str(s) for s in specs) and any("fsdp" in str(s) for s in specs)
    # prepare runs in Grain worker processes (config.worker_count): it must survive pickling
    import pickle

    ex = pred8.prepare({**recs[0], "prompt": "q?"})["example"]
    ex2 = pickle.loads(pickle.dumps(pred8.prepare))({**recs[0], "prompt": "q?"})["example"]
    assert all(np.array_equal(ex[k], ex2[k]) for k in ("input_ids", "frames"))
    dev = pred8.device_batch([{"example": ex}])
    assert dev["frames"].shape[0] == 4 and dev["frames"].sharding.spec[0] == ("data", "fsdp")

    lines1 = runner.read_samples(res1["paths"]["samples"])
    lines8 = runner.read_samples(res8["paths"]["samples"])
    assert set(lines1) == set(lines8) == {r["id"] for r in recs}  # padded rows left no lines
    answered = [i for i, x in lines1.items() if x["status"] == "ok"]
    assert len(answered) == info["n_valid"]
    assert {i: lines1[i]["prediction"] for i in answered} == {i: lines8[i]["prediction"] for i in answered}
    assert any(lines1[i]["prediction"] for i in answered)  # the random model says something
    assert res8["scores"] == res1["scores"] and res8["footer"] == res1["footer"]

    # the Grain-side prepare gives the handle's own model inputs (prompt ids, SigLIP frames); the
    # decoding itself is compared with the handle in the text-only test below
    from vlm3r_jax.eval import prompts

    for r in [r for r in recs if r["id"] in answered][:3]:
        q = prompts.build_question(r, "vsibench")
        ex = pred8.prepare({**r, "prompt": q})["example"]
        np.testing.assert_array_equal(ex["input_ids"], handle.prompt_ids(q))
        np.testing.assert_array_equal(ex["frames"], handle.prepare_video(r["video_path"], 2))


def test_eval_dataset_resume_position_is_the_jsonl(tmp_path):
    data = str(tmp_path / "bench")
    make_bench(data, per_type=2)
    source = records_lib.BenchmarkRecords(data, "vsibench")
    recs = [source[i] for i in range(len(source))]
    assert recs == records_lib.load_records(data, "vsibench")
    assert any("invalid JSON" in (r["_malformed"] or "") for r in recs)  # the bad line is an item

    full = [it["record"]["id"] for it in runner.eval_iterator(source, "vsibench")]
    assert full == [r["id"] for r in recs]
    # a run killed after k lines: the Grain stream over the same source continues with the rest
    work = str(tmp_path / "w")
    with pytest.raises(KeyboardInterrupt):
        calls = []

        def dying(batch):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return noisy_oracle()(batch)

        runner.run_eval(source, dying, work, 2, progress=False, print_table=False)
    done = runner.read_samples(os.path.join(work, runner.SAMPLES_FILE))
    k = len(done)
    assert 0 < k < len(recs) and set(done) == set(full[:k])  # lines are written in stream order
    rest = [it["record"]["id"] for it in runner.eval_iterator(source, "vsibench", done)]
    assert rest == full[k:]

    # Grain's own iterator state agrees with that position
    it = iter(runner.eval_dataset(source, "vsibench").to_iter_dataset())
    for _ in range(k):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    it2 = iter(runner.eval_dataset(source, "vsibench").to_iter_dataset())
    it2.set_state(state)
    assert [x["record"]["id"] for x in it2] == full[k:]

    # resuming through the runner with 2 Grain workers finishes the table exactly as one run
    resumed = runner.run_eval(source, noisy_oracle(), work, 2, progress=False, print_table=False, worker_count=2)
    whole = runner.run_eval(recs, noisy_oracle(), str(tmp_path / "whole"), 5, progress=False, print_table=False)
    assert resumed["table"] == whole["table"] and resumed["scores"] == whole["scores"]
    np.testing.assert_equal(len(open(os.path.join(work, runner.SAMPLES_FILE)).read().splitlines()), len(recs))


def test_text_only_sharded_over_data_matches_the_handle(tmp_path, handle):
    from vlm3r_jax.eval.sharded import ShardedVLM3RPredictor

    data = str(tmp_path / "bench")
    make_bench(data, per_type=1, extras=False, videos=False)  # text only: no video is read
    recs = records_lib.load_records(data, "vsibench")[:7]
    pred = ShardedVLM3RPredictor(handle, batch_size=5, mesh=sharding.make_mesh({"data": 8}), num_frames=2,
                                 max_new_tokens=4, text_only=True, length_buckets=(192, 256))
    assert pred.rows == 8  # 5 records padded to the 8 data shards; the 2nd batch holds 2
    res = runner.run_eval(recs, pred, str(tmp_path / "w"), 5, check_videos="none", progress=False, print_table=False)
    lines = runner.read_samples(res["paths"]["samples"])
    assert [lines[r["id"]]["status"] for r in recs] == ["ok"] * len(recs)
    from vlm3r_jax.eval import prompts

    for r in recs[:2]:
        want = handle.answer(None, prompts.build_question(r, "vsibench"), max_new_tokens=4)
        assert lines[r["id"]]["prediction"] == want
