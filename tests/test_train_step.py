"""Pure train step on a toy LM with LoRA: accumulation equivalence, frozen params untouched,
optimizer state only for trainables, 1 device == 8-device mesh, overfitting."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vlm3r_jax import sharding
from vlm3r_jax.layers import Embed, Linear
from vlm3r_jax.models.lora import LoRAConfig, attach_lora
from vlm3r_jax.train.optimizer import make_optimizer
from vlm3r_jax.train.state import TrainState
from vlm3r_jax.train.step import jit_train_step, make_train_step, next_token_xent
from vlm3r_jax.train.trainable import split_trainable

V, D = 13, 8


class ToyLM(nnx.Module):
    def __init__(self, rngs):
        self.embed = Embed(V, D, rngs=rngs)
        self.up_proj = Linear(D, 16, axes=("embed", "mlp"), rngs=rngs)
        self.fusion = Linear(16, D, axes=("mlp", "embed"), rngs=rngs)  # stands in for a fully trained block
        self.head = Linear(D, V, axes=("embed", "vocab"), use_bias=False, rngs=rngs)

    def __call__(self, ids):
        h = self.embed(ids)
        return self.head(h + self.fusion(jax.nn.gelu(self.up_proj(h))))


def loss_fn(model, batch):
    return next_token_xent(model(batch["ids"]), batch["labels"])


def _setup(lr=1e-2, dropout=0.0, trainable=(r"fusion\..*",)):
    model = ToyLM(nnx.Rngs(0))
    attach_lora(model, LoRAConfig(rank=2, alpha=4.0, dropout=dropout, targets=("up_proj",)), rngs=nnx.Rngs(1))
    graphdef, params, frozen = split_trainable(model, list(trainable))
    cfg = ml_collections.ConfigDict(dict(lr=lr, warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=0.0))
    tx, sched = make_optimizer(cfg, total_steps=1000)
    return graphdef, params, frozen, tx, sched


def _batch(n, t=6, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, (n, t)).astype(np.int32)
    labels = ids.copy()
    labels[:, : t // 2] = -100  # answers only
    labels[0, -1] = -100  # uneven answer lengths across rows
    return {"ids": ids, "labels": labels}


def _stack(batch, accum):
    return jax.tree_util.tree_map(lambda x: x.reshape((accum, -1) + x.shape[1:]), batch)


def test_only_trainables_have_state_and_frozen_stay_bit_identical():
    graphdef, params, frozen, tx, sched = _setup()
    paths = sorted(".".join(map(str, p)) for p, _ in nnx.to_flat_state(params))
    assert paths == ["fusion.bias", "fusion.kernel", "up_proj.lora.lora_a", "up_proj.lora.lora_b"]
    state = TrainState.create(params, tx)
    moments = [x for x in jax.tree_util.tree_leaves(state.opt_state) if x.ndim > 0]
    assert len(moments) == 2 * 4  # mu and nu for each trainable only
    def frozen_params(st):
        return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(st) if isinstance(v, nnx.Param)}

    frozen_before = frozen_params(frozen)
    assert len(frozen_before) == 4  # embed, up_proj kernel/bias, head
    step = jit_train_step(make_train_step(graphdef, tx, loss_fn, sched))
    for i in range(3):
        state, _ = step(state, frozen, _stack(_batch(4, seed=i), 1))
    after = frozen_params(frozen)
    for k, v in frozen_before.items():
        np.testing.assert_array_equal(after[k], v)


def test_accumulation_equals_one_big_batch():
    graphdef, params, frozen, tx, sched = _setup()
    step = jax.jit(make_train_step(graphdef, tx, loss_fn, sched))
    batch = _batch(8)
    s1, m1 = step(TrainState.create(params, tx), frozen, _stack(batch, 1))
    s4, m4 = step(TrainState.create(params, tx), frozen, _stack(batch, 4))
    assert abs(float(m1["loss"]) - float(m4["loss"])) <= 1e-5
    for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s4.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_same_losses_on_one_device_and_eight_device_mesh():
    graphdef, params, frozen, tx, sched = _setup()
    step = make_train_step(graphdef, tx, loss_fn, sched)
    losses_1 = []
    state = TrainState.create(params, tx)
    one = jax.jit(step)
    for i in range(3):
        state, m = one(state, frozen, _stack(_batch(8, seed=i), 2))
        losses_1.append(float(m["loss"]))

    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    graphdef, params, frozen, tx, sched = _setup()
    params = sharding.shard_state(params, mesh)
    frozen = sharding.shard_state(frozen, mesh)
    state = TrainState.create(params, tx)
    losses_8 = []
    with sharding.use_mesh(mesh):
        multi = jax.jit(step, donate_argnums=0)
        for i in range(3):
            batch = jax.tree_util.tree_map(
                lambda x: jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P(None, ("data", "fsdp")))),
                _stack(_batch(8, seed=i), 2),
            )
            state, m = multi(state, frozen, batch)
            losses_8.append(float(m["loss"]))
    assert state.params["up_proj"]["lora"]["lora_a"].get_value().sharding.spec[0] == "fsdp"
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5, atol=1e-5)


def test_overfits_four_examples():
    # a frozen random 8->13 head cannot separate every target, so the head trains here
    graphdef, params, frozen, tx, sched = _setup(lr=3e-2, trainable=(r"fusion\..*", r"head\..*"))
    step = jit_train_step(make_train_step(graphdef, tx, loss_fn, sched))
    state = TrainState.create(params, tx)
    # The toy LM has no context, so make the next token a function of the current one.
    ids = np.zeros((4, 6), np.int32)
    ids[:, 0] = [1, 4, 7, 10]
    for t in range(1, 6):
        ids[:, t] = (3 * ids[:, t - 1] + 1) % V
    labels = ids.copy()
    labels[:, :2] = -100
    batch = _stack({"ids": ids, "labels": labels}, 1)
    first = None
    for _ in range(150):
        state, m = step(state, frozen, batch)
        first = first if first is not None else float(m["loss"])
    assert float(m["loss"]) < 0.05 * first, (first, float(m["loss"]))


def test_dropout_streams_are_deterministic_per_step():
    graphdef, params, frozen, tx, sched = _setup(dropout=0.5)
    model = nnx.merge(graphdef, params, frozen)
    model.train()
    graphdef, params, frozen = split_trainable(model, [r"fusion\..*"])
    step = jax.jit(make_train_step(graphdef, tx, loss_fn, sched))
    a, ma = step(TrainState.create(params, tx), frozen, _stack(_batch(4), 1))
    b, mb = step(TrainState.create(params, tx), frozen, _stack(_batch(4), 1))
    assert float(ma["loss"]) == float(mb["loss"])
    assert jnp.isfinite(ma["loss"])
