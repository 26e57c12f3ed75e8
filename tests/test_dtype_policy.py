"""The one dtype policy (configs/common.py ``dtype_config``, models/dtype_policy.py): a 7B-shaped
model initialised the release way stores frozen weights in bfloat16 and the trainables (LoRA,
fusion, projector) in float32, with no weights read; the tiny golden release loads that way
too; the CPU tiny configs stay float32 end to end."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import demo_tiny, vlm3r_7b
from vlm3r_jax.convert.vlm3r_release import abstract_release_state, load_release
from vlm3r_jax.models.dtype_policy import DtypePolicy
from vlm3r_jax.models.lora import LoRAParam
from vlm3r_jax.train.vlm3r_task import param_dtypes, vlm3r_config


def _dtypes(state) -> dict[str, tuple[object, jnp.dtype]]:
    return {".".join(map(str, p)): (v, v.dtype) for p, v in nnx.to_flat_state(state) if isinstance(v, nnx.Param)}


def _trains(path: str, var) -> bool:
    return isinstance(var, LoRAParam) or path.startswith(("fusion_block.", "mm_projector.linears."))


def _check_7b(layers: int | None) -> int:
    """Dtypes of the release-initialised abstract 7B model (``layers`` per tower to keep it quick;
    None: the released depths) -> bytes of its frozen weights."""
    cfg = vlm3r_7b.get_config()
    pol = DtypePolicy.from_config(cfg.dtypes)
    assert (pol.compute, pol.frozen, pol.trainable) == ("bfloat16", "bfloat16", "float32")
    if layers:
        cfg.model.llm.num_layers = cfg.model.vision.num_layers_used = layers
        cfg.model.geometry.update(dict(enc_depth=layers, dec_depth=layers))
    vcfg = vlm3r_config(cfg.model, None, dtype=pol.compute, vocab_size=152064)
    assert vcfg.llm.dtype == vcfg.geometry.dtype == "bfloat16"
    _, state = abstract_release_state(vcfg, param_dtypes(cfg))
    params = _dtypes(state)
    frozen_bytes = 0
    for path, (var, dt) in params.items():
        want = jnp.float32 if _trains(path, var) else jnp.bfloat16
        assert dt == want, (path, dt)
        frozen_bytes += 0 if _trains(path, var) else 2 * int(np.prod(var.shape))
    lora = {p: v for p, (v, _) in params.items() if isinstance(v, LoRAParam)}
    # A and B on q, k, v, o, gate, up, down, each stacked over the layers ([L, ...])
    assert len(lora) == 7 * 2 and all(v.shape[0] == vcfg.llm.num_layers for v in lora.values())
    assert any(p.startswith("fusion_block.") for p in params) and any(p.startswith("mm_projector.") for p in params)
    return frozen_bytes


def test_release_initialised_7b_shaped_abstract_model():
    # the 7B widths and vocabulary with 2 layers per tower: 2 x 152064 x 3584 embedding + head alone
    assert _check_7b(layers=2) > 2 * 2 * 152064 * 3584


@pytest.mark.slow
def test_release_initialised_7b_abstract_model_full_depth():
    # the frozen 7B base (+ SigLIP, CUT3R) in bfloat16: about 2 bytes x 9 B parameters, not 36 GB in float32
    assert 14e9 < _check_7b(layers=None) < 20e9


def test_cpu_tiny_configs_stay_float32():
    cfg = demo_tiny.get_config()
    pol = DtypePolicy.from_config(cfg.dtypes)
    assert (pol.compute, pol.frozen, pol.trainable) == ("float32",) * 3
    dtype_of = param_dtypes(cfg)
    assert dtype_of(("llm", "embed", "embedding"), None) == jnp.float32


def test_bad_dtype_name_is_one_clear_error():
    with pytest.raises(ValueError, match="bfloat16"):
        DtypePolicy.from_config({"compute_dtype": "bf16x"})


def test_golden_release_loads_frozen_bf16_trainable_f32(golden_dir):
    root = os.path.join(golden_dir, "vlm3r_tiny")
    args = (os.path.join(root, "vlm3r_lora"), os.path.join(root, "base_llava_video_qwen2"),
            os.path.join(root, "cut3r", "cut3r_512_dpt_4_64.pth"))
    cfg = vlm3r_7b.get_config()  # the 7B recipe's policy: frozen bf16, trainable f32, compute bf16
    _, ref, _ = load_release(*args, keep_lora=True)
    vcfg, model, _ = load_release(*args, keep_lora=True, dtype="bfloat16", param_dtypes=param_dtypes(cfg))
    assert vcfg.llm.dtype == "bfloat16"
    got, want = _dtypes(nnx.state(model)), _dtypes(nnx.state(ref))
    assert got.keys() == want.keys()
    for path, (var, dt) in got.items():
        assert dt == (jnp.float32 if _trains(path, var) else jnp.bfloat16), (path, dt)
        ref_val = np.asarray(want[path][0].get_value()).astype(dt)
        np.testing.assert_array_equal(np.asarray(var.get_value()), ref_val, err_msg=path)


def test_our_checkpoint_loads_frozen_bf16_trainable_f32(tmp_path):
    import _vlm3r_helpers as H

    from vlm3r_jax.convert.vlm3r_ours import load_ours, save_ours
    from vlm3r_jax.models.host_init import host_init
    from vlm3r_jax.models.vlm3r import VLM3R

    tok = H.tokenizer(str(tmp_path))
    vcfg = vlm3r_config(H.small_model_config(), tok)
    save_ours(str(tmp_path / "m"), vcfg, host_init(lambda: VLM3R(vcfg, rngs=nnx.Rngs(0))), tok, num_frames=2)
    _, model = load_ours(str(tmp_path / "m"), param_dtypes=param_dtypes(vlm3r_7b.get_config()))
    got = _dtypes(nnx.state(model))
    assert any(dt == jnp.float32 for _, dt in got.values()) and any(dt == jnp.bfloat16 for _, dt in got.values())
    for path, (var, dt) in got.items():
        assert dt == (jnp.float32 if _trains(path, var) else jnp.bfloat16), (path, dt)
