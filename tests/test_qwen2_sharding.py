"""Qwen2 on an 8-device CPU mesh (fsdp=2, tensor=4) equals the single-device model, with the
parameters really sharded; loading places tensors straight onto the mesh."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from vlm3r_jax import sharding
from vlm3r_jax.infer.qwen2_lm import Qwen2LM
from vlm3r_jax.models.qwen2 import Qwen2Config

# sizes divisible by the mesh so every kernel shards (heads*head_dim = 48, mlp 64, vocab 96)
CFG = Qwen2Config(
    vocab_size=96, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
    rope_theta=10000.0, attention_impl="xla",
)


def _random_lm() -> Qwen2LM:
    lm = Qwen2LM.random(CFG, seed=0)
    rng = np.random.default_rng(1)
    leaves, tree = jax.tree_util.tree_flatten(lm.state)
    leaves = [jnp.asarray(np.asarray(x) + 0.2 * rng.standard_normal(x.shape).astype(np.float32)) for x in leaves]
    return Qwen2LM(CFG, lm.graphdef, jax.tree_util.tree_unflatten(tree, leaves))


def test_every_param_has_logical_axes():
    from vlm3r_jax.convert.assign import flat_variables
    from vlm3r_jax.convert.hf_qwen2 import abstract_state

    for tied in (False, True):
        _, state = abstract_state(CFG.replace(tie_word_embeddings=tied))
        for path, var in flat_variables(state).items():
            axes = var.get_metadata().get("logical_axes")
            assert axes is not None and len(axes) == var.get_value().ndim, path
            assert all(a is None or any(a == r[0] for r in sharding.DEFAULT_RULES) for a in axes), (path, axes)


def test_sharded_forward_and_generate_match_single_device(tmp_path):
    assert jax.device_count() == 8
    single = _random_lm()
    d = str(tmp_path / "ckpt")
    single.save_pretrained(d)

    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    sharded = Qwen2LM.from_pretrained(d, mesh=mesh, attention_impl="xla")
    # the layer stack's leading [L] axis is never sharded
    q = sharded.state["layers"]["attn"]["q"]["kernel"].get_value()
    assert q.sharding.spec == P(None, "fsdp", "tensor")
    assert q.addressable_shards[0].data.shape == (2, 24, 12)
    emb = sharded.state["embed"]["embedding"].get_value()
    assert emb.sharding.spec == P("tensor", "fsdp")
    down = sharded.state["layers"]["mlp"]["down"]["kernel"].get_value()
    assert down.sharding.spec == P(None, "tensor", "fsdp")

    ids = np.random.default_rng(0).integers(0, CFG.vocab_size, (4, 10))
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    ref = single.logits(ids, attention_mask=mask)
    got = sharded.logits(ids, attention_mask=mask)
    real = mask.astype(bool)
    err = np.abs(got[real] - ref[real]).max() / np.abs(ref[real]).max()
    assert err <= 1e-5, err

    np.testing.assert_array_equal(
        sharded.generate(ids, max_new_tokens=6, attention_mask=mask, eos_token_id=[]),
        single.generate(ids, max_new_tokens=6, attention_mask=mask, eos_token_id=[]),
    )
