"""Qwen2 checkpoint reading/writing without torch: config parsing, bad input errors, prefix and
ignore for bigger checkpoints, sharded export, and the LLaVA-Qwen golden base dir."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from vlm3r_jax.convert import CheckpointError, SafetensorsDir, hf_qwen2, save_safetensors
from vlm3r_jax.infer.qwen2_lm import Qwen2LM
from vlm3r_jax.models.qwen2 import Qwen2Config

CFG = Qwen2Config(
    vocab_size=53, hidden_size=24, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=40,
    rope_theta=10000.0, eos_token_ids=(3,), attention_impl="xla",
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    lm = Qwen2LM.random(CFG, seed=0)
    d = str(tmp_path_factory.mktemp("qwen2_export"))
    lm.save_pretrained(d)
    return lm, d


def _copy_dir(src: str, dst: str, tensors: dict | None = None, config: dict | None = None) -> str:
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    if config is not None:
        cfg.update(config)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f)
    if tensors is None:
        s = SafetensorsDir(src)
        tensors = {k: np.array(s.get(k)) for k in s.keys()}
    save_safetensors(os.path.join(dst, "model.safetensors"), tensors)
    return dst


def _tensors(d: str) -> dict:
    s = SafetensorsDir(d)
    return {k: np.array(s.get(k)) for k in s.keys()}


def test_from_hf_config_fields():
    hf = {
        "model_type": "llava_qwen", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 300, "rms_norm_eps": 1e-6,
        "rope_theta": 1e6, "tie_word_embeddings": False, "max_position_embeddings": 32768, "eos_token_id": 290,
        "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 2,
    }
    c = Qwen2Config.from_hf_config(hf)
    assert (c.head_dim, c.num_kv_heads, c.rope_theta, c.eos_token_ids) == (16, 2, 1e6, (290,))
    # transformers 5 writes the theta inside rope_parameters
    hf5 = dict(hf, model_type="qwen2", rope_parameters={"rope_type": "default", "rope_theta": 5000.0}, head_dim=8)
    del hf5["rope_theta"]
    c5 = Qwen2Config.from_hf_config(hf5)
    assert c5.rope_theta == 5000.0 and c5.head_dim == 8
    with pytest.raises(ValueError, match=r"my/config.json: model_type 'llama'"):
        Qwen2Config.from_hf_config(dict(hf, model_type="llama"), source="my/config.json")
    with pytest.raises(ValueError, match="rope type 'yarn'"):
        Qwen2Config.from_hf_config(dict(hf, rope_scaling={"type": "yarn", "factor": 4.0}))
    with pytest.raises(ValueError, match="sliding-window"):
        Qwen2Config.from_hf_config(dict(hf, use_sliding_window=True, max_window_layers=1))
    # transformers' precedence: a legacy rope_scaling beats rope_parameters, and rope_parameters'
    # theta beats a top-level rope_theta
    with pytest.raises(ValueError, match="rope type 'linear'"):
        Qwen2Config.from_hf_config(dict(hf5, rope_scaling={"type": "linear", "factor": 2.0}))
    assert Qwen2Config.from_hf_config(dict(hf5, rope_theta=1e6)).rope_theta == 5000.0
    # explicit layer_types decide which layers slide (transformers 5); no window without sliding_window
    sliding = dict(hf, use_sliding_window=True, sliding_window=4, max_window_layers=28)
    assert Qwen2Config.from_hf_config(dict(sliding, layer_types=["full_attention"] * 2)).num_layers == 2
    with pytest.raises(ValueError, match=r"layers \[0\] sliding-window"):
        Qwen2Config.from_hf_config(dict(sliding, layer_types=["sliding_attention", "full_attention"]))
    Qwen2Config.from_hf_config(dict(hf, use_sliding_window=True, sliding_window=None, max_window_layers=0))
    with pytest.raises(ValueError, match=r"missing required field\(s\) \['vocab_size'\]"):
        Qwen2Config.from_hf_config({k: v for k, v in hf.items() if k != "vocab_size"})
    assert Qwen2Config.from_hf_config(CFG.to_hf_config()).replace(attention_impl="xla") == CFG


def test_export_layout_and_reload(exported, tmp_path):
    lm, d = exported
    names = set(SafetensorsDir(d).keys())
    assert "lm_head.weight" in names and "model.layers.1.self_attn.q_proj.bias" in names
    assert SafetensorsDir(d).shape("model.layers.0.self_attn.k_proj.weight") == (2 * 6, 24)  # torch [out, in]
    ids = np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 5))
    again = Qwen2LM.from_pretrained(d, attention_impl="xla")
    np.testing.assert_array_equal(again.logits(ids), lm.logits(ids))
    # sharded export with an index, and bf16 on disk
    sharded = str(tmp_path / "sharded")
    lm.save_pretrained(sharded, max_shard_bytes=20_000)
    assert len([f for f in os.listdir(sharded) if f.endswith(".safetensors")]) > 1
    np.testing.assert_array_equal(Qwen2LM.from_pretrained(sharded, attention_impl="xla").logits(ids), lm.logits(ids))
    half = str(tmp_path / "bf16")
    import ml_dtypes

    lm.save_pretrained(half, dtype=ml_dtypes.bfloat16)
    assert str(SafetensorsDir(half).dtype("model.norm.weight")) == "bfloat16"
    lm_half = Qwen2LM.from_pretrained(half, dtype="float32", attention_impl="xla")
    np.testing.assert_allclose(lm_half.logits(ids), lm.logits(ids), atol=0.05 * np.abs(lm.logits(ids)).max())


def test_bad_token_ids(exported):
    lm, _ = exported
    with pytest.raises(ValueError, match=r"input_ids\[0, 2\] = 53 is outside the vocabulary \[0, 53\)"):
        lm.logits(np.array([[1, 2, 53]]))
    with pytest.raises(ValueError, match="must be an int array"):
        lm.logits(np.zeros((1, 3), np.float32))
    # padding ids are free when masked
    lm.logits(np.array([[-100, 1, 2, 3, 4], [1, 2, 3, 4, 5]]), attention_mask=np.array([[0, 1, 1, 1, 1], [1] * 5]))


def test_missing_tensor(exported, tmp_path):
    _, d = exported
    t = _tensors(d)
    del t["model.layers.1.mlp.up_proj.weight"]
    bad = _copy_dir(d, str(tmp_path / "missing"), tensors=t)
    with pytest.raises(CheckpointError) as e:
        Qwen2LM.from_pretrained(bad)
    msg = str(e.value)
    assert "missing tensors" in msg and "model.layers.1.mlp.up_proj.weight" in msg and bad in msg


def test_wrong_shape(exported, tmp_path):
    _, d = exported
    t = _tensors(d)
    t["model.layers.0.self_attn.v_proj.weight"] = np.zeros((7, 24), np.float32)
    bad = _copy_dir(d, str(tmp_path / "shape"), tensors=t)
    with pytest.raises(CheckpointError) as e:
        Qwen2LM.from_pretrained(bad)
    msg = str(e.value)
    assert "mis-shaped" in msg and "model.layers.0.self_attn.v_proj.weight [7, 24]" in msg
    assert os.path.join(bad, "model.safetensors") in msg


def test_unexpected_tensor_and_ignore(exported, tmp_path):
    _, d = exported
    t = _tensors(d)
    t["model.vision_tower.patch.weight"] = np.zeros((2, 2), np.float32)
    bad = _copy_dir(d, str(tmp_path / "extra"), tensors=t)
    with pytest.raises(CheckpointError, match=r"unexpected tensors \(1\).*model\.vision_tower\.patch\.weight"):
        Qwen2LM.from_pretrained(bad)
    Qwen2LM.from_pretrained(bad, ignore=[r"model\.vision_tower\..*"])


def test_unknown_model_type(exported, tmp_path):
    _, d = exported
    bad = _copy_dir(d, str(tmp_path / "llama"), config={"model_type": "llama"})
    with pytest.raises(ValueError, match=r"config\.json: model_type 'llama' is not a Qwen2"):
        Qwen2LM.from_pretrained(bad)


def test_empty_and_missing_dirs(exported, tmp_path):
    _, d = exported
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"no config.json in {empty}"):
        Qwen2LM.from_pretrained(str(empty))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Qwen2LM.from_pretrained(str(tmp_path / "nope"))
    only_cfg = tmp_path / "only_config"
    only_cfg.mkdir()
    with open(only_cfg / "config.json", "w") as f:
        json.dump(CFG.to_hf_config(), f)
    with pytest.raises(FileNotFoundError, match=f"no \\*.safetensors weights in {only_cfg}"):
        Qwen2LM.from_pretrained(str(only_cfg))
    (only_cfg / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Qwen2LM.from_pretrained(str(only_cfg))


def test_prefix_inside_bigger_checkpoint(exported, tmp_path):
    """A Qwen2 stored under a prefix next to other networks' tensors."""
    lm, d = exported
    t = {"language_model." + k: v for k, v in _tensors(d).items()}
    t["vision.proj.weight"] = np.ones((3, 3), np.float32)
    path = str(tmp_path / "big.safetensors")
    save_safetensors(path, t)
    state = hf_qwen2.load_qwen2_state(path, CFG, prefix="language_model.")
    ours = jax.tree_util.tree_leaves(state)
    ref = jax.tree_util.tree_leaves(lm.state)
    assert all(np.array_equal(a, b) for a, b in zip(ours, ref))


def test_tied_checkpoint_with_redundant_head(tmp_path):
    cfg = CFG.replace(tie_word_embeddings=True)
    lm = Qwen2LM.random(cfg, seed=1)
    d = str(tmp_path / "tied")
    lm.save_pretrained(d)
    assert "lm_head.weight" not in set(SafetensorsDir(d).keys())
    t = _tensors(d)
    t["lm_head.weight"] = t["model.embed_tokens.weight"]  # some exporters store the tied copy
    d2 = _copy_dir(d, str(tmp_path / "tied2"), tensors=t)
    ids = np.arange(6)[None]
    np.testing.assert_array_equal(Qwen2LM.from_pretrained(d2, attention_impl="xla").logits(ids), lm.logits(ids))


def test_llava_qwen_base_dir(golden_dir):
    """The VLM-3R base dir: model_type llava_qwen, Qwen2 under model.* plus vision tensors."""
    base = os.path.join(golden_dir, "vlm3r_tiny", "base_llava_video_qwen2")
    if not os.path.isdir(base):
        pytest.skip("vlm3r_tiny golden base dir absent")
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        Qwen2LM.from_pretrained(base)
    lm = Qwen2LM.from_pretrained(base, ignore=hf_qwen2.LLAVA_QWEN_IGNORE, attention_impl="xla")
    assert lm.config.vocab_size == 300 and lm.config.eos_token_ids == (290,)
    assert lm.logits(np.arange(5)[None]).shape == (1, 5, 300)


@pytest.mark.parametrize("cfg_eos, gen, expected", [
    (3, {"eos_token_id": 7}, (7,)),          # generation_config.json alone decides, as in transformers
    (3, {"eos_token_id": [9, 3]}, (9, 3)),   # its first id pads
    (3, {}, ()),                             # a generation config without eos never stops
    (3, None, (3,)),                         # no generation_config.json: config.json's eos
])
def test_eos_ids_from_generation_config(exported, tmp_path, cfg_eos, gen, expected):
    d = _copy_dir(exported[1], str(tmp_path / "m"), config={"eos_token_id": cfg_eos})
    gen_path = os.path.join(d, "generation_config.json")
    if os.path.exists(gen_path):
        os.remove(gen_path)
    if gen is not None:
        with open(gen_path, "w") as f:
            json.dump(gen, f)
    assert hf_qwen2.config_from_dir(d).eos_token_ids == expected


def test_model_safetensors_wins_over_other_files(exported, tmp_path):
    d = _copy_dir(exported[1], str(tmp_path / "m"))
    save_safetensors(os.path.join(d, "adapter_model.safetensors"), {"lora.weight": np.zeros((2, 2), np.float32)})
    assert "lora.weight" not in SafetensorsDir(d).keys()
    Qwen2LM.from_pretrained(d)


def test_float16_runs_on_cpu(exported):
    lm, d = exported
    ids = np.array([[1, 2, 3, 4, 5]])
    half = Qwen2LM.from_pretrained(d, dtype="float16")
    np.testing.assert_allclose(np.asarray(half.logits(ids), np.float32), lm.logits(ids), atol=0.05)
    assert half.generate(ids, max_new_tokens=3).shape == (1, 8)
