"""Loaders refuse inconsistent files instead of silently changing the model: LoRA weights without
their config or with a wrong rank, malformed safetensors headers, config files that are not JSON
objects."""

import json
import os
import shutil
import struct

import numpy as np
import pytest

from vlm3r_jax.convert.errors import CheckpointError
from vlm3r_jax.convert.json_config import read_json_object
from vlm3r_jax.convert.safetensors_io import SafetensorsFile, save_safetensors
from vlm3r_jax.convert.vlm3r_release import build_release_config, read_adapter_facts


@pytest.fixture
def lora_dir(golden_dir, tmp_path):
    d = str(tmp_path / "vlm3r_lora")
    shutil.copytree(os.path.join(golden_dir, "vlm3r_tiny", "vlm3r_lora"), d)
    for f in os.listdir(d):
        os.chmod(os.path.join(d, f), 0o644)
    return d


def _edit(path, **kv):
    with open(path) as f:
        d = json.load(f)
    d.update(kv)
    with open(path, "w") as f:
        json.dump(d, f)


def test_adapter_facts_of_the_golden_release(lora_dir):
    facts = read_adapter_facts(lora_dir)
    assert (facts["r"], facts["alpha"], facts["scale"]) == (4, 8.0, 2.0)


def test_adapter_weights_without_config_refused(lora_dir, golden_dir):
    os.remove(os.path.join(lora_dir, "adapter_config.json"))
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        read_adapter_facts(lora_dir)
    base = os.path.join(golden_dir, "vlm3r_tiny", "base_llava_video_qwen2")
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        build_release_config(lora_dir, base, os.path.join(golden_dir, "vlm3r_tiny", "cut3r", "cut3r_512_dpt_4_64.pth"))


@pytest.mark.parametrize("r,match", [(8, r"r = 8 but the lora_A tensors .* rank\(s\) \[4\]"), (0, "positive integer"),
                                     ("4", "positive integer"), (-4, "positive integer")])
def test_adapter_rank_must_match_the_tensors(lora_dir, r, match):
    _edit(os.path.join(lora_dir, "adapter_config.json"), r=r)
    with pytest.raises(CheckpointError, match=match):
        read_adapter_facts(lora_dir)


def test_adapter_alpha_must_be_finite(lora_dir):
    _edit(os.path.join(lora_dir, "adapter_config.json"), lora_alpha="8")
    with pytest.raises(CheckpointError, match="lora_alpha"):
        read_adapter_facts(lora_dir)


def _raw_safetensors(path, header, data: bytes):
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)


_F4 = {"dtype": "F32", "shape": [2]}


@pytest.mark.parametrize("header,match", [
    ([1, 2, 3], "not an object"),
    ({"w": {"dtype": "F32", "shape": [2]}}, "data_offsets"),
    ({"w": {**_F4, "data_offsets": ["0", "8"]}}, "data_offsets"),
    ({"w": {**_F4, "data_offsets": [-8, 0]}}, "data_offsets"),
    ({"w": {**_F4, "data_offsets": [0, 12]}}, "needs 8"),
    ({"w": {**_F4, "data_offsets": [8, 24]}}, "needs 8|past the end"),
    ({"w": {**_F4, "data_offsets": [0, 8]}, "v": {**_F4, "data_offsets": [4, 12]}}, "share bytes"),
    ({"w": {**_F4, "data_offsets": [0, 16]}, "v": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
     "needs|share bytes"),
    ({"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, "shape"),
    ({"w": "F32"}, "not an object"),
])
def test_safetensors_header_validated(tmp_path, header, match):
    p = str(tmp_path / "bad.safetensors")
    _raw_safetensors(p, header, bytes(16))
    with pytest.raises(CheckpointError, match=match):
        SafetensorsFile(p)


def test_safetensors_valid_file_still_reads(tmp_path):
    p = str(tmp_path / "ok.safetensors")
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros((0, 4), np.float32)
    save_safetensors(p, {"a": a, "b": b, "c": np.array(3, np.int64)})
    f = SafetensorsFile(p)
    np.testing.assert_array_equal(f.get("a"), a)
    assert f.get("b").shape == (0, 4) and int(f.get("c")) == 3


@pytest.mark.parametrize("text", ["[1, 2]", "3", '"config"', "null", "[" * 100_000])
def test_config_json_must_be_an_object(tmp_path, text):
    p = tmp_path / "config.json"
    p.write_text(text)
    with pytest.raises(CheckpointError, match=str(p)):
        read_json_object(str(p))


def test_list_config_json_in_each_loader(tmp_path, golden_dir):
    from vlm3r_jax import api

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("[]")
    (d / "model.safetensors").write_bytes(b"")
    for load in (api.load_qwen2, api.load_cut3r):
        with pytest.raises(CheckpointError, match="config.json holds a JSON list"):
            load(str(d))
    base = os.path.join(golden_dir, "vlm3r_tiny", "base_llava_video_qwen2")
    with pytest.raises(CheckpointError, match="config.json holds a JSON list"):
        build_release_config(str(d), base, None)
