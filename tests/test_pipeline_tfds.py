"""TFDS round trip: manual_dir -> ArrayRecord -> tfds.data_source -> Grain pipeline.
Skipped only when the optional extra ``tfds`` (tensorflow-datasets) is not installed."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets", reason="optional extra 'tfds' not installed (pip install -e '.[tfds]')")

from test_tokenizer import build_small_tokenizer  # noqa: E402

from data_pipeline.pipeline import PipelineConfig, make_iterator  # noqa: E402
from data_pipeline.sources import LlavaJsonSource, VsiBenchSource  # noqa: E402
from data_pipeline.synthetic_video import write_barcode_video  # noqa: E402
from data_pipeline.tfds_builders import build, tfds_source  # noqa: E402
from data_pipeline.tokenizer import QwenTokenizer  # noqa: E402


def test_tfds_round_trip(tmp_path):
    man = tmp_path / "manual"
    for i in range(3):
        write_barcode_video(str(man / "scannet" / f"scene{i}.mp4"), 10 + i, size=(48, 64))
    recs = [{"id": f"q{i}", "video": f"scannet/scene{i}.mp4", "question_type": "object_counting",
             "data_source": "scannet", "conversations": [{"from": "human", "value": f"<image>\nHow many {i}?"},
                                                          {"from": "gpt", "value": str(i)}]} for i in range(3)]
    lines = [json.dumps(r) for r in recs] + ['{"id": "broken"', json.dumps({"id": "noph", "video": "x.mp4",
                                                                            "conversations": []})]
    (man / "train.jsonl").write_text("\n".join(lines))
    b = build("llava", str(man), str(tmp_path / "tfds"))
    assert b.info.splits["train"].num_examples == 3  # the two bad records were not written
    src = tfds_source("llava", str(tmp_path / "tfds"), video_root=str(man))
    ref = LlavaJsonSource(str(man / "train.jsonl"), str(man))
    got = {src[i]["id"]: src[i] for i in range(len(src))}
    for i in range(3):
        want = ref[i]
        for k in ("id", "video", "conversations", "question_type", "data_source", "scene_name", "answer", "options", "line"):
            assert got[want["id"]][k] == want[k], k
    tok = QwenTokenizer.from_dir(build_small_tokenizer(str(tmp_path / "tok")))
    cfg = PipelineConfig(num_frames=4, siglip_size=32, geometry_size=None, length_buckets=(64, 128),
                         video_tokens_per_frame=1, worker_count=0, batch_size=3, shuffle=False)
    a = next(make_iterator(src, tok, cfg, shard=(0, 1)))
    order = [int(x[1:]) for x in a["id"]]
    r = next(make_iterator(ref, tok, cfg, shard=(0, 1)))
    np.testing.assert_array_equal(a["frames"], r["frames"][order])
    np.testing.assert_array_equal(a["input_ids"], r["input_ids"][order])


def test_tfds_vsibench_layout(tmp_path):
    man = tmp_path / "vsi"
    man.mkdir()
    rec = {"id": 1, "dataset": "arkitscenes", "scene_name": "s1", "question_type": "room_size_estimation",
           "question": "What is the size of this room?", "options": None, "ground_truth": "12.5"}
    (man / "test.jsonl").write_text(json.dumps(rec))
    build("vsibench", str(man), str(tmp_path / "tfds"))
    src = tfds_source("vsibench", str(tmp_path / "tfds"), video_root=str(man))
    want = VsiBenchSource(str(man / "test.jsonl"), str(man))[0]
    assert src[0]["video"] == want["video"] == os.path.join(str(man), "arkitscenes", "s1.mp4")
    assert src[0]["conversations"] == want["conversations"] and src[0]["answer"] == "12.5"
