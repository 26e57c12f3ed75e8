"""Sources, batching, bad-input skipping, determinism, resume in a new process, 2 workers,
global arrays."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_tokenizer import build_small_tokenizer

from data_pipeline.chat_template import IGNORE_INDEX
from data_pipeline.image_preprocess import siglip_preprocess_np
from data_pipeline.pipeline import (
    PipelineConfig,
    checkpoint_save_args,
    make_iterator,
    to_global_batch,
)
from data_pipeline.sources import BadRecordError, LlavaJsonSource, VsiBenchSource, VstiBenchSource, make_source
from data_pipeline.synthetic_video import (
    write_barcode_video,
    write_truncated_video,
    write_zero_frame_video,
)
from data_pipeline.tokenizer import QwenTokenizer
from data_pipeline.video import load_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(num_frames=4, siglip_size=32, geometry_size=36, length_buckets=(48, 64, 128, 256),
             video_tokens_per_frame=1, worker_count=0, batch_size=2)
BAD_KINDS = ["bad_encoding", "bad_json", "bad_schema", "corrupt_video", "empty_video", "missing_file",
             "missing_placeholder", "too_long"]


def _conv(q: str, a: str) -> list:
    return [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    vids = d / "videos"
    good = []
    for i in range(8):
        write_barcode_video(str(vids / f"scene{i}.mp4"), 9 + 5 * i, size=(48, 64), gop=6)
        words = " ".join(["chairs"] * (1 + 6 * i))  # spreads rows over several buckets
        good.append({"id": f"g{i}", "video": f"videos/scene{i}.mp4", "data_source": "scannet",
                     "question_type": "object_counting", "conversations": _conv(f"How many {words}?", str(i))})
    write_truncated_video(str(vids / "scene0.mp4"), str(vids / "cut.mp4"))
    write_zero_frame_video(str(vids / "zero.mp4"), size=(48, 64))
    lines = [json.dumps(r).encode() for r in good]
    bad = [
        {"id": "b_cut", "video": "videos/cut.mp4", "conversations": _conv("q", "1")},
        {"id": "b_zero", "video": "videos/zero.mp4", "conversations": _conv("q", "1")},
        {"id": "b_missing", "video": "videos/missing.mp4", "conversations": _conv("q", "1")},
        {"id": "b_noph", "video": "videos/scene1.mp4", "conversations": [{"from": "human", "value": "q"},
                                                                         {"from": "gpt", "value": "1"}]},
        {"id": "b_schema", "video": "videos/scene1.mp4"},
        {"id": "b_long", "video": "videos/scene1.mp4", "conversations": _conv("q", "chairs " * 300)},
    ]
    lines += [json.dumps(r).encode() for r in bad]
    lines.insert(3, b'{"id": "b_json", "video": ')
    lines.insert(6, b'{"id": "b_utf8", "video": "videos/scene1.mp4", "x": "\xff\xfe"}')
    (d / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n\n")
    (d / "good.json").write_text(json.dumps(good))
    return {"root": str(d), "jsonl": str(d / "train.jsonl"), "json": str(d / "good.json"), "good": good,
            "tok": QwenTokenizer.from_dir(build_small_tokenizer(str(d / "tok")))}


def _ids(batches) -> list[str]:
    return [i for b in batches for i, v in zip(b["id"].tolist(), b["valid"].tolist()) if v]


def _digest(batch) -> str:
    h = hashlib.sha256()
    for k in sorted(batch):
        h.update(k.encode())
        h.update(np.ascontiguousarray(np.asarray(batch[k])).tobytes())
    return h.hexdigest()


# --- sources -------------------------------------------------------------------------------------
def test_llava_source_json_and_jsonl(data):
    js = LlavaJsonSource(data["json"], data["root"])
    assert len(js) == 8 and js[3]["id"] == "g3" and js[3]["video"] == os.path.join(data["root"], "videos/scene3.mp4")
    assert js[3]["answer"] == "3" and js[3]["question_type"] == "object_counting" and js[3]["data_source"] == "scannet"
    jl = LlavaJsonSource(data["jsonl"], data["root"])
    assert len(jl) == 16  # blank lines ignored
    errs = {r.get("id") or r["line"]: r["error"] for r in (jl[i] for i in range(len(jl))) if "error" in r}
    assert errs == {4: "bad_json", 7: "bad_encoding", "b_noph": "missing_placeholder", "b_schema": "bad_schema"}
    both = LlavaJsonSource([data["json"], data["jsonl"]], data["root"])
    assert len(both) == 24 and both[8]["id"] == "g0" and both[8]["line"] == 1


def test_strict_mode_names_file_and_line(data):
    src = LlavaJsonSource(data["jsonl"], data["root"], strict=True)
    with pytest.raises(BadRecordError, match=r"train\.jsonl:4: bad_json"):
        src[3]
    with pytest.raises(BadRecordError, match=r"train\.jsonl:7: bad_encoding"):
        src[6]
    it = make_iterator(src, data["tok"], PipelineConfig(**SMALL, strict=True, shuffle=False), shard=(0, 1))
    with pytest.raises(BadRecordError, match="train.jsonl:4"):
        list(it)


def test_vsi_and_vsti_layouts(tmp_path):
    vsi = [{"id": 7, "dataset": "arkitscenes", "scene_name": "41069025", "question_type": "object_rel_distance",
            "question": "Which is closest to the bed?", "options": ["A. sofa", "B. lamp"], "ground_truth": "B"},
           {"id": 8, "dataset": "scannet", "scene_name": "scene0011_00", "question_type": "room_size_estimation",
            "question": "What is the size of this room?", "options": None, "ground_truth": "23.4"}]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in vsi))
    s = VsiBenchSource(str(tmp_path / "test.jsonl"), str(tmp_path))
    assert s[0]["video"] == str(tmp_path / "arkitscenes" / "41069025.mp4")
    assert s[0]["conversations"][0]["value"] == (
        "<image>\nThese are frames of a video.\nWhich is closest to the bed?\nOptions:\nA. sofa\nB. lamp\n"
        "Answer with the option's letter from the given choices directly.")
    assert s[1]["conversations"][0]["value"] == (
        "<image>\nThese are frames of a video.\nWhat is the size of this room?\n"
        "Please answer the question using a single word or phrase.")
    assert (s[0]["answer"], s[1]["answer"], s[0]["id"]) == ("B", "23.4", "7")
    vsti = [{"video_path": "scannet/scene0011_00.mp4", "question_type": "camera_movement_direction",
             "question": "Where did the camera move?", "options": ["A. Left", "B. Right"], "ground_truth": "Right",
             "mc_answer": "B"}]
    (tmp_path / "vsti.json").write_text(json.dumps(vsti))
    t = make_source("vstibench", str(tmp_path / "vsti.json"), str(tmp_path))
    assert isinstance(t, VstiBenchSource) and t[0]["answer"] == "B"
    assert t[0]["video"] == str(tmp_path / "scannet" / "scene0011_00.mp4")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": 1, "dataset": "x", "question_type": "route_planning"}))
    assert VsiBenchSource(str(tmp_path / "bad.jsonl"), str(tmp_path))[0]["error"] == "bad_schema"


# --- batches -------------------------------------------------------------------------------------
def test_batch_layout_buckets_and_frames(data):
    tok = data["tok"]
    cfg = PipelineConfig(**SMALL, shuffle=False)
    batches = list(make_iterator(LlavaJsonSource(data["json"], data["root"]), tok, cfg, shard=(0, 1)))
    assert _ids(batches) == [f"g{i}" for i in range(8)]
    shapes = set()
    for b in batches:
        B, T = b["input_ids"].shape
        shapes.add(T)
        assert T in cfg.length_buckets and b["input_ids"].dtype == np.int32 and B == 2
        assert T == min(x for x in cfg.length_buckets if x >= b["num_text_tokens"].max())
        assert b["frames"].shape == (2, 4, 32, 32, 3) and b["frames"].dtype == np.float32
        assert b["geometry_frames"].shape == (2, 4, 36, 36, 3)
        for r in range(B):
            n = int(b["num_text_tokens"][r])
            row, lab, m = b["input_ids"][r], b["labels"][r], b["attention_mask"][r]
            assert (row == -200).sum() == 1 and row[b["placeholder_index"][r]] == -200
            assert m[:n].all() and not m[n:].any()  # right padding
            assert (row[n:] == tok.pad_id).all() and (lab[n:] == IGNORE_INDEX).all()
            answer = tok.decode([y for y in lab[:n] if y != IGNORE_INDEX])
            assert answer.strip().endswith(b["answer"][r])
            # the SigLIP view holds the sampled frames: compare with the source video's frames
            total = 9 + 5 * int(b["id"][r][1:])
            np.testing.assert_array_equal(b["frame_indices"][r], np.linspace(0, total - 1, 4).astype(int))
            video = load_video(os.path.join(data["root"], f"videos/scene{b['id'][r][1:]}.mp4"), 4)
            np.testing.assert_array_equal(b["frames"][r], siglip_preprocess_np(video.frames, 32))
    assert len(shapes) >= 2  # rows really spread over buckets


def test_eval_mode_left_padding_and_time_instruction(data):
    tok = data["tok"]
    src = LlavaJsonSource(data["json"], data["root"])
    b = next(make_iterator(src, tok, PipelineConfig.for_eval(**SMALL, padding_side="left"), shard=(0, 1)))
    assert (b["labels"] == IGNORE_INDEX).all() and list(b["answer"]) == ["0", "1"]
    for r in range(2):
        n = int(b["num_text_tokens"][r])
        T = b["input_ids"].shape[1]
        assert b["attention_mask"][r, T - n:].all() and not b["attention_mask"][r, : T - n].any()
        assert tok.decode(b["input_ids"][r], skip_special_tokens=False).endswith("<|im_start|>assistant\n")
        assert b["input_ids"][r, b["placeholder_index"][r]] == -200
    batches = list(make_iterator(src, tok, PipelineConfig.for_eval(**{**SMALL, "batch_size": 3}), shard=(0, 1)))
    assert _ids(batches) == [f"g{i}" for i in range(8)]  # file order, nothing dropped
    assert batches[-1]["valid"].tolist() == [1, 1, 0] and batches[-1]["input_ids"].shape[0] == 3
    b = next(make_iterator(src, tok, PipelineConfig(**{**SMALL, "length_buckets": (256,)}, shuffle=False,
                                                    add_time_instruction=True), shard=(0, 1)))
    text = tok.decode(b["input_ids"][1], skip_special_tokens=False)
    assert "The video lasts for 0.47 seconds, and 4 frames are uniformly sampled from it. These frames are " \
           "located at 0.00s,0.13s,0.27s,0.43s.Please answer" in text


def test_skip_and_count_every_bad_kind(data):
    logs = []
    cfg = PipelineConfig(**SMALL, shuffle=False, drop_remainder=False)
    it = make_iterator(LlavaJsonSource(data["jsonl"], data["root"]), data["tok"], cfg, shard=(0, 1), log_fn=logs.append)
    batches = list(it)
    assert sorted(_ids(batches)) == [f"g{i}" for i in range(8)]
    m = it.metrics()
    assert m["data/skipped"] == len(BAD_KINDS) and m["data/examples"] == 8
    assert {k.split("/")[-1] for k in m if k.startswith("data/skipped/")} == set(BAD_KINDS)
    summary = [line for line in logs if line.startswith("data epoch 0:")]
    assert summary == ["data epoch 0: 8 examples, 8 skipped (" + ", ".join(f"{k}=1" for k in BAD_KINDS) + ")"]
    assert any("missing.mp4" in line for line in logs)


def test_shuffle_depends_only_on_seed_and_epoch(data):
    src = LlavaJsonSource(data["json"], data["root"])
    cfg = PipelineConfig(**SMALL, num_epochs=2, seed=3)
    a = _ids(make_iterator(src, data["tok"], cfg, shard=(0, 1)))
    b = _ids(make_iterator(src, data["tok"], cfg, shard=(0, 1)))
    c = _ids(make_iterator(src, data["tok"], PipelineConfig(**{**SMALL, "num_epochs": 2, "seed": 4}), shard=(0, 1)))
    assert a == b and a != c
    assert sorted(a[:8]) == sorted(a[8:]) and a[:8] != a[8:]  # each epoch is a new permutation


def test_per_host_shards_are_disjoint(data):
    src = LlavaJsonSource(data["json"], data["root"])
    cfg = PipelineConfig(**{**SMALL, "batch_size": 4})
    h0 = _ids(make_iterator(src, data["tok"], cfg, shard=(0, 2)))
    h1 = _ids(make_iterator(src, data["tok"], cfg, shard=(1, 2)))
    assert len(h0) == len(h1) == 4 and sorted(h0 + h1) == [f"g{i}" for i in range(8)]


def test_global_batch_on_mesh(data):
    import jax

    from vlm3r_jax.sharding import make_mesh

    mesh = make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:2])
    b = next(make_iterator(LlavaJsonSource(data["json"], data["root"]), data["tok"],
                           PipelineConfig(**SMALL, shuffle=False), shard=(0, 1)))
    g = to_global_batch(b, mesh)
    assert isinstance(g["input_ids"], jax.Array) and g["input_ids"].shape == b["input_ids"].shape
    assert len(g["frames"].sharding.device_set) == 2 and g["frames"].addressable_shards[0].data.shape[0] == 1
    np.testing.assert_array_equal(np.asarray(g["frames"]), b["frames"])
    assert g["id"].tolist() == b["id"].tolist()  # strings stay on the host


# --- resume + workers ----------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np, orbax.checkpoint as ocp
    sys.path.insert(0, {root!r})
    from data_pipeline.pipeline import PipelineConfig, make_iterator, checkpoint_restore_args
    from data_pipeline.sources import LlavaJsonSource
    from data_pipeline.tokenizer import QwenTokenizer

    def digest(batch):
        h = hashlib.sha256()
        for k in sorted(batch):
            h.update(k.encode()); h.update(np.ascontiguousarray(np.asarray(batch[k])).tobytes())
        return h.hexdigest()

    if __name__ == "__main__":
        cfg = PipelineConfig(**json.loads({cfg!r}))
        it = make_iterator(LlavaJsonSource({jsonl!r}, {root_data!r}), QwenTokenizer.from_dir({tok!r}), cfg, shard=(0, 1))
        with ocp.CheckpointManager({ckpt!r}) as mngr:
            mngr.restore(mngr.latest_step(), args=ocp.args.Composite(data=checkpoint_restore_args(it)))
        out = [[digest(b), b["id"].tolist()] for b in (next(it) for _ in range({n}))]
        print("RESULT" + json.dumps({{"batches": out, "metrics": it.metrics()}}))
        it.close()
""")


def test_resume_in_new_process_with_two_workers(data, tmp_path):
    """Consume k batches (2 worker processes), save with Orbax, restore in a NEW process: the next
    batches are bit-identical; the 2-worker stream covers every record exactly once per epoch."""
    import orbax.checkpoint as ocp

    cfg_d = {**SMALL, "worker_count": 2, "num_epochs": 2, "seed": 11, "drop_remainder": False}
    cfg = PipelineConfig(**cfg_d)
    src = LlavaJsonSource(data["jsonl"], data["root"])
    k, n = 3, 4
    it = make_iterator(src, data["tok"], cfg, shard=(0, 1))
    head = [next(it) for _ in range(k)]
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
        mngr.save(k, args=ocp.args.Composite(data=checkpoint_save_args(it)))
        mngr.wait_until_finished()
    rest = [next(it) for _ in range(n)]
    tail = list(it)
    it.close()
    ids = _ids(head + rest + tail)
    assert sorted(ids) == sorted([f"g{i}" for i in range(8)] * 2)  # 2 epochs, nothing lost or duplicated
    assert it.metrics()["data/skipped"] == 2 * len(BAD_KINDS)

    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=ROOT, cfg=json.dumps({**cfg_d, "length_buckets": list(SMALL["length_buckets"])}),
                                   jsonl=data["jsonl"], root_data=data["root"], tok=os.path.join(data["root"], "tok"),
                                   ckpt=str(tmp_path / "ckpt"), n=n))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert [c[0] for c in child["batches"]] == [_digest(b) for b in rest]
    assert [c[1] for c in child["batches"]] == [b["id"].tolist() for b in rest]
    assert child["metrics"]["data/examples"] == 2 * (k + n)  # skip/example counters restored too


def test_in_process_state_roundtrip(data):
    src = LlavaJsonSource(data["jsonl"], data["root"])
    cfg = PipelineConfig(**SMALL, num_epochs=2)
    it = make_iterator(src, data["tok"], cfg, shard=(0, 1))
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = [_digest(b) for b in it]
    it2 = make_iterator(src, data["tok"], cfg, shard=(0, 1))
    it2.set_state(state)
    assert [_digest(b) for b in it2] == want


def test_errors_survive_worker_process_boundaries():
    """Grain re-raises worker exceptions in the main process by pickling them."""
    import pickle

    from data_pipeline.chat_template import TruncationError
    from data_pipeline.video import VideoError

    for e in (BadRecordError("a.jsonl", 3, "bad_json", "x"), VideoError("v.mp4", "gone", "missing_file"),
              TruncationError("too long")):
        e2 = pickle.loads(pickle.dumps(e))
        assert type(e2) is type(e) and str(e2) == str(e) and e2.kind == e.kind


def test_config_dict_round_trip():
    cfg = PipelineConfig(num_frames=8, geometry_size=None, length_buckets=(64, 128), batch_size=4)
    cd = cfg.to_config_dict()
    cd.seed = 5
    assert PipelineConfig.from_mapping(cd.to_dict()) == PipelineConfig(**{**cfg.__dict__, "seed": 5})
    with pytest.raises(ValueError, match="unknown pipeline config keys"):
        PipelineConfig.from_mapping({"num_frame": 3})
    with pytest.raises(ValueError, match="strictly increasing"):
        PipelineConfig(length_buckets=(64, 32))


def test_video_cache_same_batches_fewer_decodes(data, monkeypatch):
    """video_cache_size > 0: the same batches as without the cache (bad records still skipped),
    each video decoded once per process however many rows and epochs use it, and the LRU bound
    holds."""
    import data_pipeline.examples as pipeline_mod

    src = LlavaJsonSource(data["jsonl"], data["root"])
    base = dict(SMALL, num_epochs=3)
    want = [_digest(b) for b in make_iterator(src, data["tok"], PipelineConfig(**base), shard=(0, 1))]
    decoded = []
    real = pipeline_mod.load_video
    monkeypatch.setattr(pipeline_mod, "load_video", lambda path, *a: decoded.append(path) or real(path, *a))
    it = make_iterator(src, data["tok"], PipelineConfig(**base, video_cache_size=16), shard=(0, 1))
    assert [_digest(b) for b in it] == want
    good = [p for p in decoded if "scene" in p]
    assert len(good) == len(set(good)) == 8  # 3 epochs, every scene video decoded once
    decoded.clear()
    small = list(make_iterator(src, data["tok"], PipelineConfig(**base, video_cache_size=2), shard=(0, 1)))
    assert [_digest(b) for b in small] == want
    assert len([p for p in decoded if "scene" in p]) > 8  # a 2-entry LRU evicts and re-decodes
    with pytest.raises(ValueError, match="video_cache_size"):
        PipelineConfig(**base, video_cache_size=-1)


def test_decode_threads(data, monkeypatch):
    """Worker processes decode with cores // workers threads (no oversubscription); the frames do
    not depend on the thread count."""
    from data_pipeline import examples

    monkeypatch.setattr(examples.os, "cpu_count", lambda: 8)  # decode_threads lives in examples.py

    def threads(**kw) -> int:
        return examples.decode_threads(PipelineConfig(**{**SMALL, **kw}))

    assert threads(worker_count=0) == 0  # in-process: FFmpeg's choice
    assert threads(worker_count=2) == 4
    assert threads(worker_count=16) == 1
    assert threads(worker_count=2, decode_threads=3) == 3
    with pytest.raises(ValueError, match="decode_threads"):
        PipelineConfig(**SMALL, decode_threads=-1)
    src = LlavaJsonSource(data["json"], data["root"])
    base = SMALL
    want = [_digest(b) for b in make_iterator(src, data["tok"], PipelineConfig(**base), shard=(0, 1))]
    one = make_iterator(src, data["tok"], PipelineConfig(**base, decode_threads=1), shard=(0, 1))
    assert [_digest(b) for b in one] == want


def test_all_records_bad_is_an_error_not_a_hang(data, tmp_path):
    """With num_epochs=None (training) a wrong video root used to loop forever in silence."""
    from data_pipeline.pipeline import NoUsableRecordsError

    src = LlavaJsonSource(data["json"], str(tmp_path / "wrong_root"))
    for epochs in (None, 1):
        it = make_iterator(src, data["tok"], PipelineConfig(**SMALL, num_epochs=epochs), shard=(0, 1),
                           log_fn=lambda s: None)
        with pytest.raises(NoUsableRecordsError, match=r"none of the 8 records .*missing_file.*wrong_root"):
            next(iter(it))


@pytest.mark.parametrize("shard, match", [((2, 2), "0 <= index < count"), ((-1, 2), "0 <= index < count"),
                                          ((0, 0), "0 <= index < count"), ((0, 20), "gets no records")])
def test_bad_shards(data, shard, match):
    cfg = PipelineConfig(**{**SMALL, "batch_size": shard[1] or 1})
    with pytest.raises(ValueError, match=match):
        make_iterator(LlavaJsonSource(data["json"], data["root"]), data["tok"], cfg, shard=shard)


@pytest.mark.parametrize("field", ["num_frames", "batch_size", "siglip_size", "geometry_size", "num_epochs"])
def test_config_rejects_non_positive(field):
    with pytest.raises(ValueError, match=field):
        PipelineConfig(**{**SMALL, field: 0})


def test_annotation_files_with_a_bom_or_one_object(data, tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "list.json").write_bytes(bom + json.dumps(data["good"][:3]).encode())
    (tmp_path / "lines.jsonl").write_bytes(bom + b"\n".join(json.dumps(r).encode() for r in data["good"][:3]))
    for name in ("list.json", "lines.jsonl"):
        src = LlavaJsonSource(str(tmp_path / name), data["root"])
        assert [src[i].get("id") for i in range(len(src))] == ["g0", "g1", "g2"], name
    (tmp_path / "one.json").write_text(json.dumps(data["good"][0], indent=2))
    with pytest.raises(ValueError, match="holds one JSON dict"):
        LlavaJsonSource(str(tmp_path / "one.json"), data["root"])


@pytest.mark.parametrize("rel", ["../../../../etc/passwd", "/etc/passwd", "a/../../x.mp4", "ok/../../escape.mp4"])
def test_record_paths_stay_inside_the_dataset_root(tmp_path, rel):
    from data_pipeline.sources import path_under_root
    from vlm3r_jax.eval.records import normalize

    root = tmp_path / "data"
    root.mkdir()
    assert path_under_root(str(root), "scenes/a/../b.mp4") == str(root / "scenes" / "b.mp4")
    assert path_under_root(str(root), rel) is None
    ann = tmp_path / "ann.jsonl"
    conv = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    ann.write_text(json.dumps({"id": "x", "video": rel, "conversations": conv}) + "\n")
    rec = LlavaJsonSource(str(ann), str(root))[0]
    assert rec["error"] == "bad_path" and "not inside the video root" in rec["message"]
    with pytest.raises(BadRecordError, match="bad_path"):
        LlavaJsonSource(str(ann), str(root), strict=True)[0]
    bench = normalize({"id": 1, "video_path": rel, "question_type": "x", "question": "q", "ground_truth": "1"}, 0,
                      str(root), "vstibench")
    assert bench["video_path"] is None and "leaves the benchmark directory" in bench["_malformed"]
