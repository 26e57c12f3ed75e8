"""``Qwen2LM``: the notebook-facing handle returned by :func:`vlm3r_jax.api.load_qwen2`.

It owns the parameters (an ``nnx.State``, optionally sharded over a mesh) and jitted pure
functions; inputs and outputs are NumPy arrays.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlm3r_jax import sharding
from vlm3r_jax.convert import hf_qwen2
from vlm3r_jax.infer import sampling
from vlm3r_jax.models.host_init import fill_random
from vlm3r_jax.models.kv_cache import KVCache
from vlm3r_jax.models.qwen2 import Qwen2, Qwen2Config


def qwen2_step_fns(graphdef: nnx.GraphDef) -> tuple[sampling.StepFn, sampling.EmbedFn]:
    """The (step_fn, embed_fn) pair that plugs ``Qwen2`` into :func:`sampling.generate`;
    ``params`` is the model's ``nnx.State``."""

    def step_fn(state: Any, cache: KVCache, embeds: jax.Array, mask: jax.Array) -> tuple[jax.Array, KVCache]:
        return nnx.merge(graphdef, state).last_logits(embeds, mask, cache)

    def embed_fn(state: Any, ids: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state).embed_tokens(ids)

    return step_fn, embed_fn


def _as_ids(x: Any, name: str = "input_ids") -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be an int array [B, T], got {a.dtype} {list(a.shape)}")
    return a.astype(np.int32)


class Qwen2LM:
    """A loaded Qwen2 causal LM.

    ``logits(input_ids)``: int [B, T] -> float32 [B, T, vocab].
    ``generate(input_ids, max_new_tokens=n)``: greedy by default, int [B, T] -> int [B, T + n];
    a row stops at an eos id and is padded with eos after it.
    """

    def __init__(
        self,
        cfg: Qwen2Config,
        graphdef: nnx.GraphDef,
        state: nnx.State,
        *,
        mesh: jax.sharding.Mesh | None = None,
        rules: Any = None,
    ):
        self.cfg = cfg
        self.graphdef = graphdef
        self.state = state
        self.mesh = mesh
        self.rules = tuple(rules) if rules is not None else sharding.DEFAULT_RULES
        self._step_fn, self._embed_fn = _step_fns_cached(graphdef)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        hf_dir: str,
        dtype: str = "float32",
        *,
        mesh: jax.sharding.Mesh | None = None,
        rules: Any = None,
        attention_impl: str = "auto",
        prefix: str = "",
        ignore: tuple[str, ...] | list[str] = (),
    ) -> Qwen2LM:
        """Loads ``hf_dir`` (config.json + *.safetensors [+ index]); ``dtype`` is the parameter and
        compute dtype ("float32", "bfloat16", "float16")."""
        cfg, graphdef, state = hf_qwen2.load_qwen2(
            hf_dir, dtype=dtype, mesh=mesh, rules=rules, prefix=prefix, ignore=ignore, attention_impl=attention_impl
        )
        return cls(cfg, graphdef, state, mesh=mesh, rules=rules)

    @classmethod
    def from_model(cls, model: Qwen2, **kwargs: Any) -> Qwen2LM:
        graphdef, state = nnx.split(model)
        return cls(model.cfg, graphdef, state, **kwargs)

    @classmethod
    def random(cls, cfg: Qwen2Config, seed: int = 0, **kwargs: Any) -> Qwen2LM:
        """Random weights (tests, benchmarks, demos), drawn on the host by
        :func:`vlm3r_jax.models.host_init.fill_random` (kernels N(0, 1/fan_in), embedding
        N(0, 0.02), biases 0, norm scales 1): cheap even for large shapes."""
        graphdef, abstract = hf_qwen2.abstract_state(cfg)
        return cls.from_model(fill_random(nnx.merge(graphdef, abstract), seed), **kwargs)

    def save_pretrained(self, out_dir: str, dtype: Any = None, max_shard_bytes: int | None = None) -> None:
        """Writes an HF Qwen2 directory (config.json + model.safetensors) that transformers loads."""
        hf_qwen2.save_hf(out_dir, self.state, self.cfg, dtype=dtype, max_shard_bytes=max_shard_bytes)

    @property
    def config(self) -> Qwen2Config:
        """Deprecated alias of ``cfg`` (every handle names its config ``cfg``)."""
        return self.cfg

    @property
    def model(self) -> Qwen2:
        return nnx.merge(self.graphdef, self.state)

    # -- helpers ------------------------------------------------------------------------------
    def _ctx(self):
        import contextlib

        return sharding.use_mesh(self.mesh, self.rules) if self.mesh is not None else contextlib.nullcontext()

    def _check_ids(self, ids: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Token ids must index the vocabulary where the mask marks real tokens; padding ids may be
        anything (e.g. -100) and are replaced by 0."""
        real = np.ones(ids.shape, bool) if mask is None else mask.astype(bool)
        bad = real & ((ids < 0) | (ids >= self.cfg.vocab_size))
        if bad.any():
            b, t = np.argwhere(bad)[0]
            raise ValueError(
                f"input_ids[{b}, {t}] = {ids[b, t]} is outside the vocabulary [0, {self.cfg.vocab_size}); "
                "mark padding with attention_mask = 0"
            )
        return np.where(real, ids, 0).astype(np.int32)

    def _put(self, x: np.ndarray) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(x)
        return sharding.shard_batch(x, self.mesh, self.rules)

    # -- public API ---------------------------------------------------------------------------
    def logits(self, input_ids: Any, attention_mask: Any = None) -> np.ndarray:
        """input_ids int [B, T] (optional attention_mask [B, T], 1 = real) -> float32 [B, T, vocab].
        Padded positions carry meaningless logits."""
        ids = _as_ids(input_ids)
        mask = None if attention_mask is None else _as_ids(attention_mask, "attention_mask")
        if mask is not None and mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {list(mask.shape)} != input_ids shape {list(ids.shape)}")
        ids = self._check_ids(ids, mask)
        with self._ctx():
            out = _logits_fn(self.graphdef, self.state, self._put(ids), None if mask is None else self._put(mask))
        return np.asarray(out)

    def generate(
        self,
        input_ids: Any,
        max_new_tokens: int = 32,
        *,
        attention_mask: Any = None,
        eos_token_id: int | list[int] | tuple[int, ...] | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
    ) -> np.ndarray:
        """int [B, T] -> int [B, T + max_new_tokens]: the prompt followed by the new tokens.

        Greedy unless ``temperature > 0``. ``repetition_penalty`` counts the prompt's tokens and the
        generated ones, as transformers does for text prompts. Batches with different prompt lengths must be LEFT padded
        and pass ``attention_mask`` [B, T]. ``eos_token_id`` (default: from the checkpoint config)
        may be one id or several; a finished row is padded with its first eos id.
        """
        ids = _as_ids(input_ids)
        b, t = ids.shape
        mask = np.ones_like(ids) if attention_mask is None else _as_ids(attention_mask, "attention_mask")
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {list(mask.shape)} != input_ids shape {list(ids.shape)}")
        prompt = ids
        ids = self._check_ids(ids, mask)
        if eos_token_id is None:
            eos = self.cfg.eos_token_ids
        else:
            eos = tuple(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else (int(eos_token_id),)
        cfg = sampling.SamplingConfig(
            max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
            repetition_penalty=float(repetition_penalty),
        )
        seen = np.where(mask > 0, ids, -1) if cfg.repetition_penalty != 1.0 else None
        stop, pad = sampling.stop_ids_array(eos)
        with self._ctx():
            out = _generate_ids(
                self._step_fn, self._embed_fn, self.graphdef, self.state, self._put(ids), self._put(mask),
                jax.random.key(seed), stop, pad, None if seen is None else self._put(seen),
                cfg=cfg, cache_len=t + int(max_new_tokens),
            )
        return np.concatenate([prompt, np.asarray(out.tokens)], axis=1)


@functools.lru_cache(maxsize=64)
def _step_fns_cached(graphdef: nnx.GraphDef) -> tuple[sampling.StepFn, sampling.EmbedFn]:
    # Same function objects for equal graphdefs, so every handle of one architecture shares
    # the generate compilation cache.
    return qwen2_step_fns(graphdef)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _logits_fn(graphdef, state, ids, mask):
    logits, _ = nnx.merge(graphdef, state)(ids, attention_mask=mask)
    return logits.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("step_fn", "embed_fn", "graphdef", "cfg", "cache_len"))
def _generate_ids(step_fn, embed_fn, graphdef, state, ids, mask, rng, stop, pad, seen, *, cfg, cache_len):
    # The cache is created inside the jit so XLA allocates it in place (no host round trip).
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(ids.shape[0], cache_len)
    embeds = model.embed_tokens(ids)
    return sampling.generate(step_fn, embed_fn, state, cache, embeds, mask, rng, stop, pad, seen, config=cfg)
