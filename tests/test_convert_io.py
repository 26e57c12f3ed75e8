"""Safetensors reader/writer and name-mapped loading errors."""

import json
import os

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from vlm3r_jax.convert import CheckpointError, DictSource, PrefixSource, SafetensorsDir, save_safetensors
from vlm3r_jax.convert.assign import Src, flat_arrays, load_state, transpose
from vlm3r_jax.layers import Linear


def test_roundtrip_dtypes_and_reference_reader(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a.f32": rng.standard_normal((3, 5)).astype(np.float32),
        "b.f16": rng.standard_normal((7,)).astype(np.float16),
        "c.bf16": rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
        "d.i64": np.arange(4, dtype=np.int64),
    }
    path = tmp_path / "model.safetensors"
    save_safetensors(str(path), tensors, {"format": "pt"})
    src = SafetensorsDir(str(tmp_path))
    assert set(src.keys()) == set(tensors)
    for k, v in tensors.items():
        assert src.get(k).dtype == v.dtype and src.shape(k) == v.shape
        np.testing.assert_array_equal(src.get(k).astype(np.float64), v.astype(np.float64))
    # the official library reads what we write
    from safetensors.numpy import load_file

    ref = load_file(str(path))
    np.testing.assert_array_equal(ref["a.f32"], tensors["a.f32"])


def test_sharded_index(tmp_path):
    save_safetensors(str(tmp_path / "model-00001-of-00002.safetensors"), {"x": np.ones(2, np.float32)})
    save_safetensors(str(tmp_path / "model-00002-of-00002.safetensors"), {"y": np.zeros(3, np.float32)})
    index = {"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    src = SafetensorsDir(str(tmp_path))
    assert sorted(src.keys()) == ["x", "y"]
    assert src.where("y").endswith("model-00002-of-00002.safetensors")
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
        SafetensorsDir(str(tmp_path))


def test_empty_dir_and_truncated_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        SafetensorsDir(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SafetensorsDir(str(tmp_path / "nope"))
    path = tmp_path / "model.safetensors"
    save_safetensors(str(path), {"x": np.ones((64, 64), np.float32)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        SafetensorsDir(str(tmp_path))


def test_load_state_reports_every_problem():
    layer = Linear(3, 4, axes=("embed", "mlp"), rngs=nnx.Rngs(0))
    _, state = nnx.split(layer)
    good = {"w": np.ones((4, 3), np.float32), "b": np.zeros(4, np.float32)}
    mapping = {"kernel": Src("w", transpose), "bias": Src("b")}
    out = flat_arrays(load_state(state, DictSource(good), mapping))
    assert out["kernel"].shape == (3, 4)
    bad = {"w": np.ones((4, 2), np.float32), "extra": np.zeros(1)}
    with pytest.raises(CheckpointError) as e:
        load_state(state, DictSource(bad, name="ckpt.safetensors"), mapping)
    msg = str(e.value)
    assert "ckpt.safetensors" in msg and "'b'" in msg and "kernel: expected [3, 4]" in msg and "extra" in msg
    # ignore patterns and dtype cast
    ok = load_state(state, DictSource({**good, "extra": np.zeros(1)}), mapping, ignore=[r"ext.*"], dtype=jnp.bfloat16)
    assert flat_arrays(ok)["kernel"].dtype == jnp.bfloat16


def test_prefix_source():
    src = PrefixSource(DictSource({"model.a": np.ones(1), "other": np.ones(1)}), "model.")
    assert list(src.keys()) == ["a"] and src.get("a").shape == (1,)
