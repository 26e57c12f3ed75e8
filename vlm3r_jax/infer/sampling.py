"""Model-agnostic autoregressive sampler: one prefill, then one token per step inside a single
jitted ``jax.lax.while_loop`` over a fixed-size cache.

The sampler knows nothing about the network. A model plugs in with two pure functions::

    step_fn(params, cache, inputs_embeds [B, T, D], mask [B, T]) -> (logits [B, V] float32, cache)
        Appends T positions to ``cache`` and returns the logits of each row's LAST REAL position
        (the last index where ``mask`` is 1). Used for the prefill (T = prompt length) and for
        each decode step (T = 1, mask all ones).
    embed_fn(params, ids int [B, T]) -> inputs_embeds [B, T, D]

``params`` and ``cache`` are arbitrary pytrees. Because the prefill starts from embeddings, a
multimodal model (VLM-3R) splices its video features into ``inputs_embeds`` and reuses this loop
unchanged. :func:`generate` is jitted once per (step_fn, embed_fn, SamplingConfig, shapes); keep
the same function objects across calls to hit the compilation cache.

Rows that emit a stop id are finished: every later token of that row is ``pad_id`` (usually
the first eos id). The loop exits early once every row is finished.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

StepFn = Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, Any]]
EmbedFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static decoding settings (hashable: part of the jit cache key).

    ``repetition_penalty`` (1.0 = off; the CTRL / transformers rule) first makes every token
    already generated less likely: its logit is divided by the penalty when positive and
    multiplied by it when negative. It applies to greedy decoding too. Only generated tokens
    (plus the optional ``penalty_ids`` of :func:`generate`) count: a VLM prompt is embeddings,
    as in the official ``generate(inputs_embeds=...)``, where transformers sees no prompt ids.
    ``temperature == 0`` is greedy (argmax). Otherwise logits are divided by ``temperature``,
    restricted to the ``top_k`` best (0 = all) and to the smallest set whose probability mass
    reaches ``top_p`` (nucleus sampling; 1.0 = all), and sampled. Stop ids and the pad id are
    traced arguments of :func:`generate` so changing them does not recompile.
    """

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1.0 = off), got {self.repetition_penalty}")


def stop_ids_array(eos_ids: Sequence[int] | int | None) -> tuple[jax.Array, jax.Array]:
    """Host helper: eos id(s) -> (stop_ids int32 [E] (``[-1]`` = never stop), pad_id int32 []:
    the first eos id, or 0 without one)."""
    if eos_ids is None:
        ids: tuple[int, ...] = ()
    elif isinstance(eos_ids, int):
        ids = (eos_ids,)
    else:
        ids = tuple(int(i) for i in eos_ids)
    stop = jnp.asarray(ids or (-1,), jnp.int32)
    return stop, jnp.int32(ids[0] if ids else 0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SampleOutput:
    tokens: jax.Array  # int32 [B, max_new_tokens]; after a row's eos: pad_id
    num_tokens: jax.Array  # int32 [B]: tokens generated per row, counting its eos
    done: jax.Array  # bool [B]: the row emitted an eos
    # the cache after decoding: prompt + every generated token but the last (which was never fed
    # back); a multi-turn caller continues from it (see vlm3r_jax.infer.chat)
    cache: Any = None


def penalize_repeats(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
    """logits float [B, V], seen bool [B, V] (token already produced) -> penalised logits."""
    logits = logits.astype(jnp.float32)
    hit = jnp.where(logits > 0, logits / penalty, logits * penalty)
    return jnp.where(seen, hit, logits)


def mark_seen(seen: jax.Array, ids: jax.Array) -> jax.Array:
    """seen bool [B, V] | ids int [B, T] (negative = no token) -> seen with those ids set."""
    v = seen.shape[1]
    ids = jnp.where(ids < 0, v, ids)  # out of range: dropped by the scatter below
    rows = jnp.broadcast_to(jnp.arange(ids.shape[0])[:, None], ids.shape)
    return seen.at[rows, ids].set(True, mode="drop")


def sample_logits(logits: jax.Array, rng: jax.Array, config: SamplingConfig) -> jax.Array:
    """logits float [B, V] -> token ids int32 [B] according to ``config``."""
    if config.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / config.temperature
    neg = jnp.finfo(jnp.float32).min
    if config.top_k > 0 and config.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, config.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if config.top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep a token if the mass strictly before it is below top_p (the best token always stays)
        before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = before < config.top_p
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, neg)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("step_fn", "embed_fn", "config", "return_cache"))
def generate(
    step_fn: StepFn,
    embed_fn: EmbedFn,
    params: Any,
    cache: Any,
    inputs_embeds: jax.Array,
    attention_mask: jax.Array,
    rng: jax.Array,
    stop_ids: jax.Array,
    pad_id: jax.Array,
    penalty_ids: jax.Array | None = None,
    *,
    config: SamplingConfig,
    return_cache: bool = False,
) -> SampleOutput:
    """Prefills ``cache`` (empty, with at least T + max_new_tokens - 1 slots) with
    ``inputs_embeds`` [B, T, D] / ``attention_mask`` [B, T] (left padding recommended: then every
    row's prompt ends at the same slot), then samples ``config.max_new_tokens`` tokens.

    ``rng`` is a ``jax.random.key``; the result is a deterministic function of it. ``stop_ids``
    int32 [E]: a row finishes when it emits any of them (use ``[-1]`` to never stop); ``pad_id``
    int32 []: what finished rows emit afterwards (see :func:`stop_ids_array`). ``penalty_ids``
    int [B, P] (negative = none): tokens that count as already seen for the repetition penalty.
    ``return_cache``: also return the cache after decoding (to continue a conversation).
    Returns :class:`SampleOutput`.
    """
    b = inputs_embeds.shape[0]
    n = config.max_new_tokens
    need = inputs_embeds.shape[1] + n - 1
    max_len = getattr(cache, "max_len", None)  # caches that expose their size are checked here
    if max_len is not None and max_len < need:
        # writes past the end would be clamped by dynamic_update_slice and silently corrupt the cache
        raise ValueError(f"cache has {max_len} slots but prompt {inputs_embeds.shape[1]} + {n} new tokens need {need}")
    eos = jnp.asarray(stop_ids, jnp.int32).reshape(-1)
    fill = jnp.asarray(pad_id, jnp.int32)

    penalize = config.repetition_penalty != 1.0

    def pick(logits, key, done, seen):
        if penalize:
            logits = penalize_repeats(logits, seen, config.repetition_penalty)
        tok = sample_logits(logits, key, config)
        tok = jnp.where(done, fill, tok)
        if penalize:
            seen = mark_seen(seen, tok[:, None])
        return tok, done | jnp.any(tok[:, None] == eos[None, :], axis=-1), seen

    logits, cache = step_fn(params, cache, inputs_embeds, attention_mask)
    # without a penalty the [B, V] table is a [B, 1] dummy so the loop carries nothing big
    seen = jnp.zeros((b, logits.shape[-1] if penalize else 1), bool)
    if penalize and penalty_ids is not None:
        seen = mark_seen(seen, jnp.asarray(penalty_ids, jnp.int32))
    rng, key = jax.random.split(rng)
    tok, done, seen = pick(logits, key, jnp.zeros((b,), bool), seen)
    tokens = jnp.full((b, n), fill, jnp.int32).at[:, 0].set(tok)
    num = jnp.ones((b,), jnp.int32)

    def cond(carry):
        i, _, _, done, _, _, _, _ = carry
        return (i < n) & ~jnp.all(done)

    def body(carry):
        i, tok, tokens, done, num, cache, rng, seen = carry
        emb = embed_fn(params, tok[:, None])
        logits, cache = step_fn(params, cache, emb, jnp.ones((b, 1), jnp.int32))
        rng, key = jax.random.split(rng)
        new_tok, new_done, seen = pick(logits, key, done, seen)
        tokens = jax.lax.dynamic_update_slice(tokens, new_tok[:, None], (0, i))
        num = num + (~done).astype(jnp.int32)
        return i + 1, new_tok, tokens, new_done, num, cache, rng, seen

    carry = (jnp.int32(1), tok, tokens, done, num, cache, rng, seen)
    _, _, tokens, done, num, cache, _, _ = jax.lax.while_loop(cond, body, carry)
    return SampleOutput(tokens=tokens, num_tokens=num, done=done, cache=cache if return_cache else None)
