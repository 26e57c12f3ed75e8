"""CUT3R checkpoint loading: pickle-free torch reader (safety + agreement with torch), constructor
string parsing, name map round trips, clear errors."""

import io
import os
import pickle
import zipfile

import numpy as np
import pytest
from flax import nnx

from vlm3r_jax.convert.assign import flat_arrays
from vlm3r_jax.convert.cut3r_ckpt import (
    export_state_dict,
    load_cut3r,
    parse_constructor_string,
    random_params_like,
    save_cut3r_dir,
)
from vlm3r_jax.convert.errors import CheckpointError
from vlm3r_jax.convert.torch_pickle import TorchPickleSource, load_torch_pickle
from vlm3r_jax.models.cut3r import init_cut3r, tiny_config

PTH = os.path.join("vlm3r_tiny", "cut3r", "cut3r_512_dpt_4_64.pth")
ODD = dict(enc_embed_dim=24, enc_num_heads=2, dec_embed_dim=20, dec_num_heads=1, dec_depth=2, state_size=10,
           state_dec_num_heads=5, local_mem_size=3, dpt_feature_dim=6, dpt_last_dim=5, dpt_layer_dims=(3, 5, 7, 9))  # fmt: skip


@pytest.fixture(scope="session")
def golden_dir(request):
    env = os.environ.get("VLM3R_GOLDEN")
    if env and os.path.isdir(env):
        return env
    return request.getfixturevalue("golden_dir")


def _zip_pickle(path, payload: bytes, name="archive"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/data.pkl", payload)
        z.writestr(f"{name}/byteorder", "little")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/vlm3r_cut3r_pwned",))


class _EvilEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("evil", [_Evil(), _EvilEval()])
def test_malicious_pickle_refused(tmp_path, evil):
    marker = "/tmp/vlm3r_cut3r_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    p = tmp_path / "evil.pth"
    _zip_pickle(p, pickle.dumps({"model": {"w": evil}}, protocol=2))
    with pytest.raises(
        CheckpointError, match=r"refusing to unpickle (posix|nt|os|builtins|__builtin__)\.(system|eval)"
    ):
        TorchPickleSource(str(p))
    with pytest.raises(CheckpointError, match="refusing"):
        load_cut3r(str(p))
    assert not os.path.exists(marker)


def test_namespace_only_when_allowed(golden_dir):
    with pytest.raises(CheckpointError, match="allow_namespace"):
        TorchPickleSource(os.path.join(golden_dir, PTH))
    src = TorchPickleSource(os.path.join(golden_dir, PTH), allow_namespace=True)
    assert "ARCroco3DStereoConfig" in src.obj["args"].model
    assert src.shape("model.pose_token") == (1, 1, 32)


def test_truncated_and_corrupt_files(golden_dir, tmp_path):
    data = open(os.path.join(golden_dir, PTH), "rb").read()
    for n in (len(data) // 2, 100, len(data) - 10):
        p = tmp_path / f"trunc{n}.pth"
        p.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="truncated|corrupt"):
            load_cut3r(str(p))
    p = tmp_path / "garbage.pth"
    p.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match=str(p)):
        TorchPickleSource(str(p))
    # valid zip whose storage is missing
    p = tmp_path / "nostorage.pth"
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(p, "w") as zout:
        for n in zin.namelist():
            if not n.endswith("/data/0"):
                zout.writestr(n, zin.read(n))
    with pytest.raises(CheckpointError, match="missing"):
        load_cut3r(str(p))


def test_constructor_string_parsing():
    s = ("ARCroco3DStereo(ARCroco3DStereoConfig(freeze='encoder', state_size=768, pos_embed='RoPE100', "
         "rgb_head=True, pose_head=True, patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), head_type='dpt', "
         "output_mode='pts3d+pose', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, float('inf')), "
         "pose_mode=('exp', -inf, inf), enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, "
         "dec_depth=12, dec_num_heads=12, landscape_only=False))")  # fmt: skip
    kw = parse_constructor_string(s)
    assert kw["depth_mode"] == ("exp", -np.inf, np.inf) and kw["conf_mode"] == ("exp", 1, np.inf)
    assert kw["img_size"] == (512, 512) and kw["state_size"] == 768
    for bad in (
        "ARCroco3DStereo(ARCroco3DStereoConfig(state_size=__import__('os').system('true')))",
        "os.system('true')",
        "ARCroco3DStereo(ARCroco3DStereoConfig(**{'a': 1}))",
        "ARCroco3DStereo(ARCroco3DStereoConfig(state_size=[x for x in ()]))",
    ):
        with pytest.raises(CheckpointError):
            parse_constructor_string(bad)


@pytest.mark.parametrize("overrides", [{}, ODD])
def test_safetensors_dir_round_trip(tmp_path, overrides):
    model = init_cut3r(tiny_config(**overrides), 3)
    random_params_like(model, seed=1)
    save_cut3r_dir(model, str(tmp_path))
    loaded, cfg = load_cut3r(str(tmp_path))
    assert cfg == model.cfg
    a, b = flat_arrays(nnx.split(model)[1]), flat_arrays(nnx.split(loaded)[1])
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_corrupt_config_json_names_the_file(tmp_path):
    save_cut3r_dir(init_cut3r(tiny_config(), 0), str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_cut3r(str(tmp_path))


def test_missing_and_misshaped_tensors(tmp_path):
    from vlm3r_jax.convert.safetensors_io import save_safetensors

    model = init_cut3r(tiny_config(), 0)
    save_cut3r_dir(model, str(tmp_path))
    sd = export_state_dict(nnx.split(model)[1])
    del sd["dec_blocks.1.attn.qkv.weight"]
    sd["enc_norm.weight"] = np.zeros((7,), np.float32)
    save_safetensors(str(tmp_path / "model.safetensors"), sd)
    with pytest.raises(CheckpointError) as e:
        load_cut3r(str(tmp_path))
    msg = str(e.value)
    assert "dec_blocks.1.attn.qkv.weight" in msg and "enc_norm" in msg and "model.safetensors" in msg


@pytest.mark.torch
def test_torch_pth_written_by_torch_reads_identically(tmp_path, golden_dir):
    """Same weights written as a released-format .pth with torch -> pure reader -> identical params;
    and the pure reader agrees with torch.load(weights_only=True) on the golden .pth/.bin files."""
    import argparse

    import torch

    from vlm3r_jax.convert.torch_pickle import load_with_torch

    cfg = tiny_config(**ODD)
    model = init_cut3r(cfg, 5)
    random_params_like(model, seed=2)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in export_state_dict(nnx.split(model)[1]).items()}
    sd["enc_norm_ray_map.weight"] = torch.ones(cfg.enc_embed_dim)  # unused reference weights are ignored
    sd["scratch_alias"] = sd["downstream_head.dpt_self.scratch.layer_rn.0.weight"]
    del sd["scratch_alias"]
    sd["downstream_head.dpt_self.scratch.layer1_rn.weight"] = sd["downstream_head.dpt_self.scratch.layer_rn.0.weight"]
    ctor = (
        "ARCroco3DStereo(ARCroco3DStereoConfig(output_mode='pts3d+pose', head_type='dpt', depth_mode=('exp', -inf, inf), "
        "conf_mode=('exp', 1, inf), pose_mode=('exp', -inf, inf), landscape_only=False, ray_enc_depth=1, "
        f"state_size={cfg.state_size}, local_mem_size={cfg.local_mem_size}, state_pe='2d', "
        f"state_dec_num_heads={cfg.state_dec_num_heads}, rgb_head=True, pose_head=True, img_size=(64, 64), "
        f"patch_size=16, enc_embed_dim={cfg.enc_embed_dim}, enc_depth={cfg.enc_depth}, "
        f"enc_num_heads={cfg.enc_num_heads}, dec_embed_dim={cfg.dec_embed_dim}, dec_depth={cfg.dec_depth}, "
        f"dec_num_heads={cfg.dec_num_heads}, pos_embed='RoPE100'))"
    )
    p = tmp_path / "ckpt.pth"
    torch.save({"model": sd, "args": argparse.Namespace(model=ctor)}, p)
    loaded, lcfg = load_cut3r(str(p))
    assert lcfg.dpt_layer_dims == cfg.dpt_layer_dims and lcfg.dpt_feature_dim == cfg.dpt_feature_dim
    a, b = flat_arrays(nnx.split(model)[1]), flat_arrays(nnx.split(loaded)[1])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # bf16 and non-contiguous tensors through the pure reader
    t = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    torch.save({"bf": t.to(torch.bfloat16), "tr": t.t(), "sl": t[1:, 2:]}, tmp_path / "x.bin")
    got = load_torch_pickle(str(tmp_path / "x.bin"))
    np.testing.assert_array_equal(got["bf"].astype(np.float32), t.numpy())
    np.testing.assert_array_equal(got["tr"], t.t().numpy())
    np.testing.assert_array_equal(got["sl"], t[1:, 2:].numpy())
    for rel, ns in ((PTH, True), ("vlm3r_tiny/vlm3r_lora/adapter_model.bin", False),
                    ("vlm3r_tiny/vlm3r_lora/non_lora_trainables.bin", False)):  # fmt: skip
        path = os.path.join(golden_dir, rel)
        ours, theirs = load_torch_pickle(path, ns), load_with_torch(path, ns)
        flat_o = ours["model"] if "model" in ours else ours
        flat_t = theirs["model"] if "model" in theirs else theirs
        assert flat_o.keys() == flat_t.keys()
        for k in flat_o:
            np.testing.assert_array_equal(flat_o[k], flat_t[k], err_msg=k)
