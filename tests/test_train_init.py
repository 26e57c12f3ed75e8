"""vlm3r_jax.train.init: the from-scratch N(0, initializer_range) redraw used by the demo."""

from __future__ import annotations

import _vlm3r_helpers as H
import jax
import numpy as np
import pytest
from flax import nnx

from vlm3r_jax.models.vlm3r import VLM3R
from vlm3r_jax.train import vlm3r_task
from vlm3r_jax.train.init import reinit_normal


def _params(model):
    return {".".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.iter_graph(model)
            if isinstance(v, nnx.Param)}


@pytest.mark.parametrize("hidden", [48, 36])
def test_reinit_redraws_only_the_named_modules(tmp_path, hidden):
    cfg = vlm3r_task.vlm3r_config(H.small_model_config(hidden_size=hidden, num_heads=3, num_kv_heads=1),
                                  H.tokenizer(str(tmp_path)))
    model = VLM3R(cfg, rngs=nnx.Rngs(0))
    before = _params(model)
    done = reinit_normal(model, 0.02, ("llm", "mm_projector"), seed=3)
    after = _params(model)
    assert done and all(p.split(".")[0] in ("llm", "mm_projector") for p in done)
    assert "llm.embed.embedding" in done and "llm.layers.attn.q.kernel" in done  # the layer stack
    for name, old in before.items():
        new = after[name]
        if name in done:
            assert new.dtype == old.dtype and new.shape == old.shape
            assert abs(new.std() - 0.02) < 0.004 and abs(new.mean()) < 0.004, name
        else:  # biases, norm scales, SigLIP, CUT3R, fusion: untouched
            np.testing.assert_array_equal(new, old, err_msg=name)
    # deterministic in the seed
    model2 = VLM3R(cfg, rngs=nnx.Rngs(0))
    reinit_normal(model2, 0.02, ("llm", "mm_projector"), seed=3)
    jax.tree.map(np.testing.assert_array_equal, _params(model2), after)


def test_build_model_applies_initializer_range(tmp_path):
    from configs import demo_tiny

    cfg = demo_tiny.get_config()
    cfg.model = H.small_model_config()
    H.tokenizer(str(tmp_path))
    cfg.data.tokenizer_dir = str(tmp_path / "tok")
    _, plain, _ = vlm3r_task.build_model(cfg)
    cfg.model.initializer_range = 0.02
    _, scaled, _ = vlm3r_task.build_model(cfg)
    q0, q1 = (np.asarray(m.llm.layers.attn.q.kernel[...][0]) for m in (plain, scaled))  # layer 0 of the stack
    assert q0.std() > 0.1 and abs(q1.std() - 0.02) < 0.004  # LeCun (1/sqrt(48)) -> 0.02
    p0, p1 = _params(plain), _params(scaled)
    tower = [k for k in p0 if k.startswith("vision_tower.")]
    assert tower
    for k in tower:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)


def test_reinit_rejects_a_non_positive_std(tmp_path):
    cfg = vlm3r_task.vlm3r_config(H.small_model_config(), H.tokenizer(str(tmp_path)))
    with pytest.raises(ValueError, match="> 0"):
        reinit_normal(VLM3R(cfg, rngs=nnx.Rngs(0)), 0.0, ("llm",))
