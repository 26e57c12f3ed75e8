"""The pure train step: next-token cross-entropy on answer tokens, gradient accumulation by
``lax.scan`` over micro-batches, one optimizer update.

Normalisation: the loss is the SUM of token losses divided by the number of answer tokens in
the whole global batch (all micro-batches, all data-parallel shards). Summing inside and
dividing once at the end makes ``k`` micro-batches of ``b`` rows give exactly the update of
one batch of ``k*b`` rows, however answer lengths vary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vlm3r_jax.train.state import TrainState

IGNORE_INDEX = -100

# loss_fn(model, batch) -> (sum of token losses, number of answer tokens)
LossFn = Callable[[nnx.Module, dict], tuple[jax.Array, jax.Array]]


def next_token_xent(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX
                    ) -> tuple[jax.Array, jax.Array]:
    """logits [B, L, V] (position t predicts t+1), labels [B, L] -> (loss sum, token count) in float32."""
    logits = logits[:, :-1].astype(jnp.float32)
    target = labels[:, 1:]
    valid = target != ignore_index
    safe = jnp.where(valid, target, 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    return jnp.sum(jnp.where(valid, losses, 0.0)), jnp.sum(valid).astype(jnp.float32)


def answer_positions(labels: jax.Array, max_labels: int = 0, ignore_index: int = IGNORE_INDEX
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """labels [B, L] -> (idx int [B, K], target [B, K], valid bool [B, K]): the positions t whose
    next token t+1 carries a label, first ones first, padded with invalid slots. ``K`` is
    ``max_labels`` (a static bound) or L - 1 when 0."""
    target = labels[:, 1:]
    valid = target != ignore_index
    k = target.shape[1] if max_labels <= 0 else min(int(max_labels), target.shape[1])
    # a stable sort of "not labelled" puts the labelled positions first, in order
    idx = jnp.argsort(jnp.logical_not(valid), axis=1, stable=True)[:, :k].astype(jnp.int32)
    return idx, jnp.take_along_axis(target, idx, axis=1), jnp.take_along_axis(valid, idx, axis=1)


def answer_token_xent(hidden: jax.Array, labels: jax.Array, head: Callable[[jax.Array], jax.Array],
                      max_labels: int = 0, ignore_index: int = IGNORE_INDEX) -> tuple[jax.Array, jax.Array]:
    """:func:`next_token_xent` without the ``[B, L, vocab]`` logits: hidden [B, L, D] (final-normed)
    is gathered at the labelled positions (at most ``max_labels`` per row, static) and only those
    go through ``head`` ([B, K, D] -> [B, K, vocab]); logits and loss in float32.

    A row with more labelled tokens than ``max_labels`` makes the loss NaN (the loop then stops):
    dropping tokens silently would train on a different objective. ``labels_overflow`` checks a
    host batch beforehand with a clear message."""
    idx, target, valid = answer_positions(labels, max_labels, ignore_index)
    h = jnp.take_along_axis(hidden, idx[..., None], axis=1)
    logits = head(h).astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, target, 0))
    lsum = jnp.sum(jnp.where(valid, losses, 0.0))
    count = jnp.sum(valid).astype(jnp.float32)
    total = jnp.sum(labels[:, 1:] != ignore_index).astype(jnp.float32)
    return jnp.where(count == total, lsum, jnp.nan), count


def labels_overflow(labels: Any, max_labels: int, ignore_index: int = IGNORE_INDEX) -> int:
    """Host check: the largest number of labelled next-token targets in a row of ``labels``
    [..., L] when it exceeds ``max_labels`` (0 = no bound), else 0."""
    if max_labels <= 0:
        return 0
    n = int(np.max(np.sum(np.asarray(labels)[..., 1:] != ignore_index, axis=-1), initial=0))
    return n if n > max_labels else 0


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn,
                    schedule: optax.Schedule | None = None) -> Callable:
    """Returns ``step(state, frozen, batch) -> (state, metrics)``.

    ``batch`` leaves are shaped ``[accum, micro_batch, ...]``. Dropout streams are reseeded each
    micro-step from ``(state.rng, step, micro index)`` so a resumed run repeats exactly.
    """

    def micro_grads(params, frozen, mb, key):
        def f(p):
            # Fresh Variable objects at this trace level: dropout mutates its RNG counter, and NNX
            # forbids mutating variables created in an outer trace.
            model = nnx.merge(graphdef, p, jax.tree_util.tree_map(lambda x: x, frozen))
            nnx.reseed(model, dropout=key)
            return loss_fn(model, mb)

        (lsum, count), grads = jax.value_and_grad(f, has_aux=True)(params)
        return lsum, count, grads

    def step(state: TrainState, frozen: Any, batch: dict) -> tuple[TrainState, dict]:
        base = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        n_micro = jax.tree_util.tree_leaves(batch)[0].shape[0]
        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)

        def body(carry, xs):
            g_acc, l_acc, c_acc = carry
            mb, i = xs
            lsum, count, g = micro_grads(state.params, frozen, mb, jax.random.fold_in(base, i))
            g_acc = jax.tree_util.tree_map(jnp.add, g_acc, g)
            return (g_acc, l_acc + lsum, c_acc + count), None

        (g_sum, l_sum, count), _ = jax.lax.scan(body, (zeros, jnp.float32(0), jnp.float32(0)),
                                                (batch, jnp.arange(n_micro)))
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree_util.tree_map(lambda g: g / denom, g_sum)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": l_sum / denom, "tokens": count, "grad_norm": optax.tree.norm(grads)}
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def jit_train_step(step: Callable, state_shardings: Any = None, frozen_shardings: Any = None,
                   batch_shardings: Any = None) -> Callable:
    """``jax.jit`` with explicit shardings and the old train state donated."""
    if state_shardings is None:
        return jax.jit(step, donate_argnums=0)
    return jax.jit(step, in_shardings=(state_shardings, frozen_shardings, batch_shardings),
                   out_shardings=(state_shardings, None), donate_argnums=0)
