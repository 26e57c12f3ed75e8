"""Released-layout loading where the official loader's behaviour is not visible in the golden set:
defaults of absent config keys, the pooling stride, non_lora_trainables.bin keys beyond the projector
and fusion block, a base that still holds SigLIP's last layer, and ordered token selections."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlm3r_jax import api
from vlm3r_jax.convert.assign import flat_arrays
from vlm3r_jax.convert.torch_pickle import load_torch_pickle
from vlm3r_jax.convert.torch_save import save_torch
from vlm3r_jax.models.vlm3r import spatial_parts

PTH = os.path.join("cut3r", "cut3r_512_dpt_4_64.pth")


@pytest.fixture
def release(golden_dir, tmp_path):
    """A writable copy of the golden release tree -> (root, edit_json)."""
    root = str(tmp_path / "vlm3r_tiny")
    shutil.copytree(os.path.join(golden_dir, "vlm3r_tiny"), root)

    def edit_json(rel: str, fn) -> None:
        path = os.path.join(root, rel)
        with open(path) as f:
            d = json.load(f)
        fn(d)
        with open(path, "w") as f:
            json.dump(d, f)

    return root, edit_json


def _load(root):
    return api.load_vlm3r(os.path.join(root, "vlm3r_lora"), base=os.path.join(root, "base_llava_video_qwen2"),
                          geometry=os.path.join(root, PTH))


def _params(model):
    return flat_arrays(nnx.state(model.model, nnx.Param))


def test_absent_select_key_and_pool_stride_follow_the_reference(release):
    root, edit = release

    def change(d):
        del d["spatial_tower_select_feature"]  # the reference's getattr default: patch_tokens
        d["mm_spatial_pool_stride"] = 4  # read only by the reference's unused encode_multimodals

    edit("vlm3r_lora/config.json", change)
    m = _load(root)
    assert m.cfg.spatial_select == "patch_tokens" and m.cfg.projector.pool_stride == 2


def test_every_non_lora_key_overrides_the_base(release, caplog):
    root, _ = release
    path = os.path.join(root, "vlm3r_lora", "non_lora_trainables.bin")
    nl = load_torch_pickle(path)
    ref = _params(_load(root))
    newline = np.full(ref["mm_projector.image_newline"].shape, 0.5, np.float32)
    norm = np.full(ref["llm.norm.scale"].shape, 2.0, np.float32)
    nl["base_model.model.model.image_newline"] = newline
    nl["base_model.model.model.norm.weight"] = norm
    nl["base_model.model.model.not_a_parameter.weight"] = np.zeros(3, np.float32)
    save_torch(path, nl)
    got = _params(_load(root))
    np.testing.assert_array_equal(got["mm_projector.image_newline"], newline)
    np.testing.assert_array_equal(got["llm.norm.scale"], norm)
    assert "not_a_parameter" in caplog.text
    others = [k for k in ref if k not in ("mm_projector.image_newline", "llm.norm.scale")]
    for k in others:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_siglip_layers_are_the_hub_tower_minus_its_last(release):
    root, edit = release
    # a hub tower of 2 layers: the reference keeps 1 and never reads the base's layer 1
    edit("siglip_hub_snapshot/config.json", lambda d: d.update(num_hidden_layers=2))
    assert _load(root).cfg.vision.layers == 1


def test_ordered_token_selections():
    assert spatial_parts("all") == ("camera", "patch")
    assert spatial_parts("patch_tokens,camera_tokens") == ("patch", "camera")
    assert spatial_parts("patch_tokens,all") == ("camera", "patch")  # "all" starts over, as the reference
    assert spatial_parts("all,patch_tokens") == ("camera", "patch", "patch")
    with pytest.raises(ValueError, match="'points' is not one of"):
        spatial_parts("patch_tokens,points")


def test_select_geometry_concatenates_in_order(golden_dir):
    g = os.path.join(golden_dir, "vlm3r_tiny")
    m = api.load_vlm3r(os.path.join(g, "vlm3r_lora"), base=os.path.join(g, "base_llava_video_qwen2"),
                       geometry=os.path.join(g, PTH))
    tokens = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)  # [F, 1 + N, D]
    model = m.model
    model.cfg = model.cfg.replace(spatial_select="patch_tokens,camera_tokens")
    out = np.asarray(model.select_geometry(tokens))
    np.testing.assert_array_equal(out, np.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1))
