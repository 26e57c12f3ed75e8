"""The train step on the tiny VLM-3R itself (SigLIP -> CUT3R -> fusion -> projector -> Qwen2 with
LoRA), not a toy LM: overfitting through the video path, the paper's trainable set (LoRA, fusion,
projector) with frozen parts bit-identical and without optimizer state, and the same losses on
one device and on an 8-device (data=2, fsdp=2, tensor=2) mesh.

The model is vlm3r_tiny-shaped but smaller (32x32 frames, 2 frames per video, width 32/64) so
the three tests share one model build and stay well under a minute on 2 cores."""

from __future__ import annotations

import contextlib

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from vlm3r_jax import sharding
from vlm3r_jax.models.cut3r.config import Cut3rConfig
from vlm3r_jax.models.fusion import FusionConfig
from vlm3r_jax.models.host_init import host_init
from vlm3r_jax.models.lora import LoRAConfig, LoRAParam
from vlm3r_jax.models.projector import ProjectorConfig
from vlm3r_jax.models.qwen2 import Qwen2Config
from vlm3r_jax.models.siglip import SiglipVisionConfig
from vlm3r_jax.models.vlm3r import DEFAULT_TRAINABLE, LLM_LORA_TARGETS, VLM3R, VLM3RConfig
from vlm3r_jax.train.optimizer import make_optimizer
from vlm3r_jax.train.state import TrainState
from vlm3r_jax.train.step import make_train_step
from vlm3r_jax.train.trainable import split_trainable
from vlm3r_jax.train.vlm3r_task import vlm3r_loss

VOCAB, PH, FRAMES, SIZE = 48, -200, 2, 32


def _config(lora_dropout: float = 0.0, fusion_dropout: float = 0.0) -> VLM3RConfig:
    llm = Qwen2Config(vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=96, max_position_embeddings=512, eos_token_ids=(1,), attention_impl="xla")
    vision = SiglipVisionConfig(image_size=SIZE, patch_size=8, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=4, use_post_layernorm=False, use_head=False)
    geometry = Cut3rConfig(patch_size=16, enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=32,
                           dec_depth=1, dec_num_heads=2, state_size=8, state_dec_num_heads=2, local_mem_size=4,
                           ray_enc_depth=1, dpt_feature_dim=8, dpt_last_dim=8, dpt_layer_dims=(8, 8, 8, 8),
                           rope_fp16_rounding=False)
    projector = ProjectorConfig(mm_hidden_size=32, hidden_size=64, num_patches_per_side=vision.num_patches_per_side)
    fusion = FusionConfig(d_clip=32, d_spatial=32, num_heads=4, dropout=fusion_dropout)
    lora = LoRAConfig(rank=4, alpha=8.0, dropout=lora_dropout, targets=LLM_LORA_TARGETS)
    return VLM3RConfig(llm=llm, vision=vision, projector=projector, fusion=fusion, geometry=geometry,
                       geometry_image_size=(SIZE, SIZE), model_max_length=512, lora=lora)


@pytest.fixture(scope="module")
def tiny():
    """(graphdef, full state) of one tiny VLM-3R with LoRA attached; tests merge their own copy.
    numpy-initialised: eager NNX init compiles every initialiser separately (minutes when busy)."""
    cfg = _config()
    return nnx.split(host_init(lambda: VLM3R(cfg, rngs=nnx.Rngs(params=0, dropout=1))))


def _copy(tiny) -> VLM3R:
    graphdef, state = tiny
    return nnx.merge(graphdef, jax.tree_util.tree_map(lambda x: x.copy(), state))


def _batch(n: int, seed: int, distinct_answers: bool = False) -> dict:
    """``n`` rows ``[prompt..., <video>, prompt..., answer, eos]`` with their own random video.

    ``distinct_answers``: every row has the SAME text prompt and a different answer token, so only
    the video can tell the rows apart (the overfit test then exercises the whole video path)."""
    rng = np.random.default_rng(seed)
    t = 12
    ids = rng.integers(2, VOCAB, (n, t)).astype(np.int32)
    if distinct_answers:
        ids[:] = ids[0]
        ids[:, t - 2] = 2 + np.arange(n)
    ids[:, 3] = PH
    ids[:, t - 1] = 1
    labels = np.full_like(ids, -100)
    labels[:, t - 2:] = ids[:, t - 2:]  # answer + eos
    mask = np.ones_like(ids)
    if not distinct_answers:  # a right-padded row with a shorter answer: uneven token counts
        labels[0, t - 2] = -100
        mask[-1, t - 1] = 0
        labels[-1, t - 1] = -100
    frames = rng.uniform(-1, 1, (n, FRAMES, SIZE, SIZE, 3)).astype(np.float32)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "frames": frames}


def _micro(batch: dict) -> dict:
    return {k: v[None] for k, v in batch.items()}  # [accum=1, B, ...]


def _optim(lr: float, steps: int = 100):
    return make_optimizer(ml_collections.ConfigDict(dict(lr=lr, warmup_ratio=0.0, weight_decay=0.0,
                                                         max_grad_norm=1.0)), steps)


def _flat(state) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)
            if isinstance(v, nnx.Param)}


def test_overfits_four_videos(tiny):
    model = _copy(tiny)
    model.train()
    # Everything but CUT3R trains here (the from-scratch demo's set): a random frozen SigLIP + LoRA
    # alone would need many more steps to tell four random videos apart.
    graphdef, params, frozen = split_trainable(model, [r"llm\..*", r"vision_tower\..*", *DEFAULT_TRAINABLE])
    tx, sched = _optim(5e-3, steps=40)
    step = jax.jit(make_train_step(graphdef, tx, vlm3r_loss, sched), donate_argnums=0)
    state = TrainState.create(params, tx)
    batch = _micro(_batch(4, seed=0, distinct_answers=True))
    losses = []
    for _ in range(40):
        state, m = step(state, frozen, batch)
        losses.append(float(m["loss"]))
    # 4 answers + eos, 8 labelled tokens: chance is ln(48) = 3.9 per token
    assert losses[0] > 2.0, losses[:3]
    assert losses[-1] < 0.05, losses[::5]


def test_paper_trainable_set_only_lora_fusion_projector_change(tiny):
    model = _copy(tiny)
    model.train()
    graphdef, params, frozen = split_trainable(model, list(DEFAULT_TRAINABLE), include_lora=True)
    trainable = _flat(params)
    assert trainable, "nothing trainable"
    for path in trainable:
        assert path.startswith(("fusion_block.", "mm_projector.linears.")) or ".lora." in path, path
    lora = [v for p, v in nnx.to_flat_state(params) if isinstance(v, LoRAParam)]
    assert len(lora) == 2 * 7 and all(v.get_value().shape[0] == 2 for v in lora)  # (a, b) x 7 Linears, [2 layers]
    assert not any(p.startswith(("vision_tower.", "spatial_tower.")) for p in trainable)
    before = _flat(frozen)
    assert any(p.startswith("spatial_tower.") for p in before) and any(p.startswith("llm.embed") for p in before)

    tx, sched = _optim(1e-2)
    state = TrainState.create(params, tx)
    # optimizer state: exactly one mu and one nu per trainable leaf, nothing for the frozen ones
    n_train = len(jax.tree_util.tree_leaves(params))
    moments = [x for x in jax.tree_util.tree_leaves(state.opt_state) if np.ndim(x) > 0]
    assert len(moments) == 2 * n_train
    assert sum(x.size for x in moments) == 2 * sum(x.size for x in jax.tree_util.tree_leaves(params))

    step = jax.jit(make_train_step(graphdef, tx, vlm3r_loss, sched))
    for i in range(3):
        state, m = step(state, frozen, _micro(_batch(4, seed=i)))
        assert np.isfinite(float(m["loss"]))
    after = _flat(state.params)
    for path, v in trainable.items():
        # lora_a gets no gradient while lora_b is still zero at step 1 but moves afterwards
        assert not np.array_equal(after[path], v), f"{path} did not change"
    for path, v in _flat(frozen).items():
        np.testing.assert_array_equal(v, before[path], err_msg=path)


def _geometry_tokens(tiny, frames: np.ndarray) -> np.ndarray:
    """CUT3R tokens [B, F, 1 + N, Dg] computed on one device (the offline feature-cache path)."""
    graphdef, state = tiny
    return np.asarray(jax.jit(lambda st, x: nnx.merge(graphdef, st).geometry_tokens(x))(state, frames))


@pytest.mark.slow  # ~90 s; nightly (launch/test.sh --all); the toy-LM mesh test in test_train_step runs by default
def test_same_losses_on_one_device_and_eight_device_mesh(tiny):
    """SigLIP, fusion, projector, Qwen2 + LoRA on data=2 x fsdp=2 x tensor=2 vs one device.

    CUT3R runs once on one device and its tokens come in through ``batch["geometry_tokens"]``
    (the offline-cache path of ``launch/extract_geometry.py``), which keeps this test fast; the
    CUT3R rollout under the same mesh is :func:`test_cut3r_rollout_under_mesh`."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake CPU) devices; tests/conftest.py sets them")
    batches = []
    for i in range(3):
        b = _batch(8, seed=10 + i)
        b["geometry_tokens"] = _geometry_tokens(tiny, b["frames"])
        batches.append(_micro(b))

    def run(mesh):
        model = _copy(tiny)
        model.train()
        graphdef, params, frozen = split_trainable(model, list(DEFAULT_TRAINABLE), include_lora=True)
        tx, sched = _optim(1e-2)
        if mesh is not None:
            params = sharding.shard_state(params, mesh)
            frozen = sharding.shard_state(frozen, mesh)
            spec = jax.sharding.NamedSharding(mesh, jax.P(None, ("data", "fsdp")))
        state = TrainState.create(params, tx)
        losses = []
        with sharding.use_mesh(mesh) if mesh is not None else contextlib.nullcontext():
            step = jax.jit(make_train_step(graphdef, tx, vlm3r_loss, sched))
            for batch in batches:
                if mesh is not None:
                    batch = jax.tree_util.tree_map(lambda x: jax.device_put(x, spec), batch)
                state, m = step(state, frozen, batch)
                losses.append(float(m["loss"]))
        return losses

    one = run(None)
    eight = run(sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
    np.testing.assert_allclose(eight, one, rtol=0, atol=1e-5)
    assert one[0] != one[2]  # the steps really updated something


def test_cut3r_rollout_under_mesh(tiny):
    """Regression: before CUT3R's blocks pinned their residual-stream layout, this rollout was
    off by O(1) on data=2 x fsdp=2 x tensor=2 (an XLA SPMD resharding bug, see
    ``cut3r/blocks.py:_residual``)."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake CPU) devices; tests/conftest.py sets them")
    graphdef, state = tiny
    frames = _batch(8, seed=10)["frames"]
    fn = jax.jit(lambda st, x: nnx.merge(graphdef, st).geometry_tokens(x))
    ref = np.asarray(fn(state, frames))
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    spec = jax.sharding.NamedSharding(mesh, jax.P(("data", "fsdp")))
    with sharding.use_mesh(mesh):  # as every entry point (train loop, eval, VLM3RModel) runs it
        out = np.asarray(fn(sharding.shard_state(state, mesh), jax.device_put(frames, spec)))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)
