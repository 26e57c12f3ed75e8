"""One name map per component, used both ways: exporting a tiny random model through the map and
loading the tensors back through the same map is the identity on every parameter, and the map
names exactly the tensors the export writes (nothing derived separately). Covers every layout op:
transpose, conv permutations, packed q/k/v row blocks, vocabulary rows cut on load and refilled on
export, and the PEFT adapters of the released layout."""

import jax
import numpy as np
import pytest
from flax import nnx

from vlm3r_jax.convert import DictSource
from vlm3r_jax.convert.assign import (
    Block,
    Permute,
    Rows,
    Src,
    export_tensors,
    flat_arrays,
    flat_variables,
    load_state,
    param_slots,
    transpose,
)
from vlm3r_jax.convert.cut3r_ckpt import name_map
from vlm3r_jax.convert.errors import CheckpointError
from vlm3r_jax.convert.fusion_ckpt import reference_mapping
from vlm3r_jax.convert.hf_qwen2 import hf_mapping
from vlm3r_jax.convert.hf_siglip import siglip_mapping
from vlm3r_jax.convert.llava_projector import projector_mapping
from vlm3r_jax.convert.release_layout import LORA_KEY, lora_paths, release_maps
from vlm3r_jax.convert.vlm3r_release import merge_lora_rules
from vlm3r_jax.layers import Linear
from vlm3r_jax.models.cut3r.config import tiny_config
from vlm3r_jax.models.fusion import FUSION_VARIANTS, FusionConfig, build_fusion
from vlm3r_jax.models.lora import LoRAConfig
from vlm3r_jax.models.projector import ProjectorConfig, VisionProjector
from vlm3r_jax.models.qwen2 import Qwen2, Qwen2Config
from vlm3r_jax.models.siglip import SiglipVisionConfig, SiglipVisionModel
from vlm3r_jax.models.vlm3r import LLM_LORA_TARGETS, VLM3R, VLM3RConfig

QWEN = Qwen2Config(vocab_size=37, hidden_size=24, num_layers=2, num_heads=3, num_kv_heads=1, intermediate_size=40,
                   tie_word_embeddings=False)
SIGLIP = SiglipVisionConfig(image_size=28, patch_size=7, hidden_size=18, intermediate_size=26, num_hidden_layers=3,
                            num_layers_used=2, num_attention_heads=3, use_post_layernorm=True, use_head=True)
CUT3R = tiny_config(enc_embed_dim=24, enc_num_heads=2, dec_embed_dim=20, dec_num_heads=1, dec_depth=2, state_size=10,
                    state_dec_num_heads=5, local_mem_size=3, dpt_feature_dim=6, dpt_last_dim=5,
                    dpt_layer_dims=(3, 5, 7, 9))


def _random(build, seed=0):
    """An abstract model with host-drawn numpy parameters (jax init and jnp.zeros compile per shape)."""
    model = nnx.eval_shape(build)
    rng = np.random.default_rng(seed)
    for _, var in sorted(flat_variables(nnx.state(model, nnx.Param)).items()):
        v = var.get_value()
        var.set_value(rng.standard_normal(v.shape).astype(v.dtype))
    return model


def _param_names(state):
    return set(param_slots(state))


def _round_trip(state, mapping, source_extra=None):
    """Export ``state`` through ``mapping``, load it back into zeros through the same map: identity."""
    tensors = export_tensors(state, mapping)
    assert set(mapping) == _param_names(state)
    assert set(tensors) == {rule.keys for rule in mapping.values()}  # the map's key set is the export's
    zeros = jax.tree.map(np.zeros_like, state)
    loaded = load_state(zeros, DictSource({**tensors, **(source_extra or {})}), mapping)
    want, got = flat_arrays(state), flat_arrays(loaded)
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    return tensors


def test_layout_ops_invert():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2, 5))
    for op in (Permute((2, 3, 1, 0)), Permute((2, 3, 0, 1)), transpose):
        np.testing.assert_array_equal(op.save(op.load(x)), x)
    packed = rng.standard_normal((9, 4))
    blocks = [Block(i, 3, transpose) for i in range(3)]
    np.testing.assert_array_equal(np.concatenate([b.save(b.load(packed)) for b in blocks]), packed)
    cut = Rows(5, transpose)
    emb = rng.standard_normal((8, 4))
    assert cut.load(emb).shape == (4, 5)
    np.testing.assert_array_equal(cut.refill(cut.save(cut.load(emb)), emb), emb)


def test_qwen2_round_trip_and_vocab_refill():
    model = _random(lambda: Qwen2(QWEN, rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    _round_trip(state, hf_mapping(QWEN))
    # vocabulary cut on load: export writes the kept rows; the original checkpoint refills the rest
    rng = np.random.default_rng(1)
    orig = {"model.embed_tokens.weight": rng.standard_normal((QWEN.vocab_size + 4, 24)).astype(np.float32),
            "lm_head.weight": rng.standard_normal((QWEN.vocab_size + 4, 24)).astype(np.float32)}
    cut = hf_mapping(QWEN, truncate_vocab=True)
    plain = _round_trip(state, cut)
    assert plain["model.embed_tokens.weight"].shape[0] == QWEN.vocab_size
    full = export_tensors(state, cut, fill=DictSource(orig))
    for key, arr in orig.items():
        assert full[key].shape == arr.shape
        np.testing.assert_array_equal(full[key][QWEN.vocab_size:], arr[QWEN.vocab_size:])
    back = load_state(jax.tree.map(np.zeros_like, state), DictSource(full), cut)
    np.testing.assert_array_equal(flat_arrays(back)["lm_head.kernel"], flat_arrays(state)["lm_head.kernel"])


def test_siglip_round_trip_packs_the_head_in_proj():
    model = _random(lambda: SiglipVisionModel(SIGLIP, rngs=nnx.Rngs(0)))
    t = _round_trip(nnx.state(model, nnx.Param), siglip_mapping(SIGLIP, "vision_model."))
    assert t["vision_model.head.attention.in_proj_weight"].shape == (3 * 18, 18)
    assert t["vision_model.embeddings.patch_embedding.weight"].shape == (18, 3, 7, 7)  # OIHW


@pytest.mark.parametrize("kind", ["linear", "mlp2x_gelu"])
def test_projector_round_trip(kind):
    pc = ProjectorConfig(projector_type=kind, mm_hidden_size=18, hidden_size=24, num_patches_per_side=4,
                         patch_merge_type="spatial_unpad", newline_position="grid")
    model = _random(lambda: VisionProjector(pc, rngs=nnx.Rngs(0)))
    _round_trip(nnx.state(model, nnx.Param), projector_mapping(pc))


@pytest.mark.parametrize("variant", list(FUSION_VARIANTS))
def test_fusion_round_trip(variant):
    cfg = FusionConfig(fusion_block=variant, d_clip=12, d_spatial=10, num_heads=3)
    model = _random(lambda: build_fusion(cfg, d_llm=15, rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    _round_trip(state, reference_mapping(state))


@pytest.fixture(scope="module")
def tiny_vlm3r():
    vc = SiglipVisionConfig(image_size=28, patch_size=7, hidden_size=18, intermediate_size=26, num_hidden_layers=2,
                            num_layers_used=1, num_attention_heads=3, use_post_layernorm=False, use_head=False)
    pc = ProjectorConfig(mm_hidden_size=18, hidden_size=QWEN.hidden_size, num_patches_per_side=vc.num_patches_per_side,
                         patch_merge_type="spatial_unpad", newline_position="grid")
    cfg = VLM3RConfig(llm=QWEN, vision=vc, projector=pc, geometry=CUT3R, geometry_image_size=(32, 32),
                      fusion=FusionConfig(d_clip=18, d_spatial=CUT3R.dec_embed_dim, num_heads=3),
                      lora=LoRAConfig(rank=2, alpha=5.0, dropout=0.0, targets=LLM_LORA_TARGETS))
    return _random(lambda: VLM3R(cfg, rngs=nnx.Rngs(0)))


def test_cut3r_round_trip(tiny_vlm3r):
    state = nnx.state(tiny_vlm3r.spatial_tower, nnx.Param)  # a tiny CUT3R (building one costs ~15 s)
    t = _round_trip(state, name_map(state))
    assert any(v.ndim == 4 for v in t.values())  # conv and transposed-conv layouts are exercised


def test_whole_release_layout_round_trip(tiny_vlm3r):
    model = tiny_vlm3r
    state = nnx.state(model, nnx.Param)
    maps = release_maps(model.cfg, state, lora_modules=lora_paths(model))
    assert sorted(maps) == ["fusion_block", "llm", "mm_projector", "spatial_tower", "vision_tower"]
    tensors = {}
    for name, mapping in maps.items():
        tensors[name] = _round_trip(state[name], mapping)
    adapters = {k for k in tensors["llm"] if k.startswith(LORA_KEY)}
    assert len(adapters) == 2 * 7 * QWEN.num_layers  # lora_A and lora_B of every targeted Linear
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) and k.startswith(LORA_KEY + "base_model.model.model.")
               for k in adapters)
    # the keys of the parts are disjoint: one file layout, no tensor written twice
    keys = [k for t in tensors.values() for k in t]
    assert len(keys) == len(set(keys))


def test_merged_lora_on_load_is_w_plus_scaled_ba(tiny_vlm3r):
    model = tiny_vlm3r
    state = nnx.state(model, nnx.Param)
    maps = release_maps(model.cfg, state, lora_modules=lora_paths(model))
    tensors = export_tensors(state["llm"], maps["llm"])
    scale = model.cfg.lora.scale
    plain = nnx.state(_random(lambda: Qwen2(QWEN, rngs=nnx.Rngs(0))), nnx.Param)
    merged = flat_arrays(load_state(plain, DictSource(tensors), merge_lora_rules(maps["llm"], scale)))
    ours = flat_arrays(state["llm"])
    k, a, b = (ours[f"layers.1.attn.q{s}"] for s in (".kernel", ".lora.lora_a", ".lora.lora_b"))
    np.testing.assert_allclose(merged["layers.1.attn.q.kernel"], k + scale * a @ b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(merged["layers.1.input_norm.scale"], ours["layers.1.input_norm.scale"])
    # a computed rule is not a rename: exporting through it is refused
    with pytest.raises(CheckpointError, match="computed"):
        export_tensors(plain, merge_lora_rules(maps["llm"], scale))


def test_an_export_missing_a_parameter_is_refused():
    """A map entry whose parameter the state lacks is an error, not a file with a tensor missing."""
    state = nnx.state(Linear(3, 2, axes=("embed", "mlp"), rngs=nnx.Rngs(0)), nnx.Param)
    mapping = {"kernel": Src("w"), "bias": Src("b"), "extra": Src("x")}
    with pytest.raises(CheckpointError, match=r"\['extra'\] missing from the state"):
        export_tensors(state, mapping)
