"""Qwen2 decoder-only language model (Flax NNX), numerically matching HF ``Qwen2ForCausalLM``.

Architecture (per layer): RMSNorm -> grouped-query self-attention (q/k/v with bias, o without,
rotate-half RoPE with ``rope_theta``) -> residual -> RMSNorm -> SwiGLU MLP -> residual; then a
final RMSNorm and an LM head (tied to the embedding table when ``tie_word_embeddings``).

The model accepts token ids or ready-made ``inputs_embeds`` (the VLM splices video features into
the embedding sequence), a padding mask (left or right padding), explicit positions, and a
fixed-size :class:`~vlm3r_jax.models.kv_cache.KVCache` for incremental decoding. One code path
serves training (no cache), prefill (empty cache) and one-token decode steps (filled cache).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vlm3r_jax.layers import Embed, Linear, RMSNorm, dot_product_attention
from vlm3r_jax.layers.attention import IMPLEMENTATIONS, resolve_implementation
from vlm3r_jax.layers.remat import check_policy
from vlm3r_jax.layers.scan import scan_layers, stack_modules
from vlm3r_jax.models.kv_cache import KVCache
from vlm3r_jax.sharding import constrain

# model_type values whose config.json describes a Qwen2 language model (LLaVA-Qwen wraps one).
SUPPORTED_MODEL_TYPES = ("qwen2", "llava_qwen")


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    """Sizes and numerics of a Qwen2 decoder. ``dtype`` is the compute dtype, ``param_dtype`` the
    storage dtype of the weights (both numpy dtype names)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    head_dim: int = 0  # 0 -> hidden_size // num_heads (HF's default)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"
    attention_impl: str = "auto"
    remat: str = "none"  # per-layer rematerialization policy (vlm3r_jax/layers/remat.py)

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                    "set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        check_policy(self.remat)
        if self.attention_impl not in IMPLEMENTATIONS:
            raise ValueError(f"attention_impl {self.attention_impl!r} not in {IMPLEMENTATIONS}")
        for name in ("dtype", "param_dtype"):
            jnp.dtype(getattr(self, name))  # fail early on a typo
        object.__setattr__(self, "eos_token_ids", tuple(int(i) for i in self.eos_token_ids))

    def replace(self, **changes: Any) -> Qwen2Config:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], *, source: str = "config.json", **overrides: Any) -> Qwen2Config:
        """Builds the config from a parsed HF ``config.json`` (``model_type`` qwen2 or llava_qwen).

        ``overrides`` set fields that HF does not store (``dtype``, ``param_dtype``, ``attention_impl``).
        ``source`` names the file in error messages.
        """
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"{source}: model_type {model_type!r} is not a Qwen2 language model; expected one of "
                f"{SUPPORTED_MODEL_TYPES}. Point the loader at a Qwen2 (or LLaVA-Qwen) checkpoint directory."
            )
        required = (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "vocab_size",
        )
        absent = [k for k in required if k not in hf]
        if absent:
            raise ValueError(f"{source}: missing required field(s) {absent} for a Qwen2 config")
        # transformers 5 lets a legacy rope_scaling win over rope_parameters, and rope_parameters'
        # own rope_theta over the top-level one
        rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
        rope = rope if isinstance(rope, Mapping) else {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", None):
            raise ValueError(f"{source}: rope type {rope_type!r} is not supported (only default RoPE)")
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        n_layers = int(hf["num_hidden_layers"])
        if hf.get("use_sliding_window", False) and hf.get("sliding_window") is not None:
            window_from = int(hf.get("max_window_layers", n_layers))
            layer_types = hf.get("layer_types") or [
                "sliding_attention" if i >= window_from else "full_attention" for i in range(n_layers)]
            sliding = [i for i, t in enumerate(layer_types) if t == "sliding_attention"]
            if sliding:
                raise ValueError(
                    f"{source}: use_sliding_window=true makes layers {sliding} sliding-window "
                    f"(sliding_window={hf['sliding_window']}, max_window_layers={window_from}, "
                    "layer_types); sliding-window attention is not supported. Set use_sliding_window=false "
                    "if the model was trained without it (Qwen2 releases were)"
                )
        eos = hf.get("eos_token_id")
        eos_ids = () if eos is None else (tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),))
        n_heads = int(hf["num_attention_heads"])
        kwargs: dict[str, Any] = dict(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            num_layers=n_layers,
            num_heads=n_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
            intermediate_size=int(hf["intermediate_size"]),
            head_dim=int(hf.get("head_dim") or 0),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
            eos_token_ids=eos_ids,
            bos_token_id=hf.get("bos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
        )
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{source}: hidden_act {hf.get('hidden_act')!r} is not supported (Qwen2 uses silu)")
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_config(self) -> dict[str, Any]:
        """A ``config.json`` dict that ``transformers.Qwen2ForCausalLM`` loads."""
        eos: Any = list(self.eos_token_ids) if len(self.eos_token_ids) != 1 else self.eos_token_ids[0]
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "intermediate_size": self.intermediate_size,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "use_sliding_window": False,
            "attention_dropout": 0.0,
            "eos_token_id": eos if self.eos_token_ids else None,
            "bos_token_id": self.bos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": str(jnp.dtype(self.param_dtype)),
        }


# --- rotary embeddings -------------------------------------------------------------------------
def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """positions int [B, T] -> cos, sin float32 [B, T, head_dim] (frequencies repeated twice, HF layout)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, N, H], cos/sin [B, T, H] -> [B, T, N, H]; rotate-half convention (first half pairs
    with second half), computed in float32."""
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


# --- modules -----------------------------------------------------------------------------------
class Qwen2Attention(nnx.Module):
    def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, n, nkv, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        common = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.q = Linear(d, n * h, axes=("embed", "heads"), use_bias=True, **common)
        self.k = Linear(d, nkv * h, axes=("embed", "kv_heads"), use_bias=True, **common)
        self.v = Linear(d, nkv * h, axes=("embed", "kv_heads"), use_bias=True, **common)
        self.o = Linear(n * h, d, axes=("heads", "embed"), use_bias=False, **common)

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array | None,
        kv: tuple[jax.Array, jax.Array] | None,
        start: jax.Array | None,
        implementation: str,
        padding: Mapping[str, jax.Array] | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """x [B, T, D]; mask bool [B, 1, T, S] or None (= causal); padding: the causal case's
        ``segment_ids``/``q_lengths``/``kv_lengths`` for fused kernels; kv: this layer's cache
        ([B, S, Nkv, H] each, read only) that the T new keys/values join at slot ``start``
        -> ([B, T, D], the new (k, v) [B, T, Nkv, H] for the caller to write, or None)."""
        cfg = self.cfg
        b, t, _ = x.shape
        q = self.q(x).reshape(b, t, cfg.num_heads, cfg.head_dim)
        k = self.k(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        v = self.v(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        q = constrain(apply_rope(q, cos, sin), ("batch", "length", "act_heads", None))
        k = apply_rope(k, cos, sin)
        new = None
        if kv is not None:
            ck, cv = kv
            new = (k.astype(ck.dtype), v.astype(cv.dtype))
            k = jax.lax.dynamic_update_slice(ck, new[0], (0, start, 0, 0)).astype(q.dtype)
            v = jax.lax.dynamic_update_slice(cv, new[1], (0, start, 0, 0)).astype(q.dtype)
        out = dot_product_attention(
            q, k, v, mask=mask, is_causal=mask is None, scale=cfg.head_dim**-0.5, implementation=implementation,
            **(padding or {}),
        )
        out = constrain(out, ("batch", "length", "act_heads", None))
        return self.o(out.reshape(b, t, cfg.num_heads * cfg.head_dim)), new


class Qwen2MLP(nnx.Module):
    def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        common = dict(use_bias=False, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        self.gate = Linear(d, f, axes=("embed", "mlp"), **common)
        self.up = Linear(d, f, axes=("embed", "mlp"), **common)
        self.down = Linear(f, d, axes=("mlp", "embed"), **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, T, D] -> [B, T, D]."""
        h = jax.nn.silu(self.gate(x)) * self.up(x)
        h = constrain(h, ("batch", "length", "act_mlp"))
        return self.down(h)


class Qwen2Layer(nnx.Module):
    def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
        pdt = jnp.dtype(cfg.param_dtype)
        self.input_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=pdt)
        self.attn = Qwen2Attention(cfg, rngs=rngs)
        self.post_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=pdt)
        self.mlp = Qwen2MLP(cfg, rngs=rngs)

    def __call__(self, x, cos, sin, mask, kv, start, implementation, padding=None):
        h, kv = self.attn(self.input_norm(x), cos, sin, mask, kv, start, implementation, padding)
        x = x + h
        x = x + self.mlp(self.post_norm(x))
        return constrain(x, ("batch", "length", "act_embed")), kv


def positions_from_mask(mask: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
    """mask bool/int [B, T] (1 = real token) -> positions int32 [B, T]: real tokens count
    ``offset, offset+1, ...`` (HF ``cumsum - 1``); padding slots get a clamped dummy value."""
    pos = jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1
    return jnp.maximum(pos, 0) + jnp.asarray(offset, jnp.int32).reshape(-1, 1)


class Qwen2(nnx.Module):
    """Qwen2 causal LM. The decoder layers are one stack (:mod:`vlm3r_jax.layers.scan`) whose
    variables are ``[L, ...]``; per-layer names (used by :mod:`vlm3r_jax.convert.hf_qwen2`):
    ``embed.embedding``, ``layers.{i}.{input_norm,post_norm}.scale``,
    ``layers.{i}.attn.{q,k,v,o}.{kernel,bias}``, ``layers.{i}.mlp.{gate,up,down}.kernel``,
    ``norm.scale``, ``lm_head.kernel`` (absent when tied)."""

    def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = jnp.dtype(cfg.param_dtype)
        self.embed = Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=pdt, rngs=rngs)
        self.layers = stack_modules([Qwen2Layer(cfg, rngs=rngs) for _ in range(cfg.num_layers)], "layers")
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=pdt)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else Linear(
                cfg.hidden_size,
                cfg.vocab_size,
                axes=("embed", "vocab"),
                use_bias=False,
                dtype=jnp.dtype(cfg.dtype),
                param_dtype=pdt,
                rngs=rngs,
            )
        )

    def embed_tokens(self, ids: jax.Array) -> jax.Array:
        """ids int [B, T] -> [B, T, D] in the compute dtype."""
        return self.embed(ids, dtype=jnp.dtype(self.cfg.dtype))

    def head(self, hidden: jax.Array) -> jax.Array:
        """Final-normed hidden [..., D] -> logits [..., vocab] (compute dtype)."""
        if self.lm_head is None:
            return self.embed.attend(hidden)
        return self.lm_head(hidden)

    def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> KVCache:
        """An empty cache with ``max_len`` slots (prompt + new tokens) per row."""
        cfg = self.cfg
        return KVCache.init(
            cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim, jnp.dtype(dtype or cfg.dtype)
        )

    def hidden_states(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        positions: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        cache: KVCache | None = None,
        right_padded: bool = False,
    ) -> tuple[jax.Array, KVCache | None]:
        """Runs the decoder without the LM head -> (final-normed hidden [B, T, D], cache).

        input_ids int [B, T] or inputs_embeds [B, T, D] (exactly one); attention_mask [B, T]
        (1 = real token, 0 = padding, left or right; ``right_padded=True`` promises right padding,
        which lets cuDNN take lengths instead of a dense mask); positions int [B, T] (default: from
        the mask, continuing from ``cache.lengths``). With ``cache`` the T tokens are written at
        slots ``cache.end ... cache.end + T - 1`` and attend to every earlier valid slot.
        """
        cfg = self.cfg
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids [B, T] or inputs_embeds [B, T, D]")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds.astype(jnp.dtype(cfg.dtype))
        b, t, _ = x.shape
        x = constrain(x, ("batch", "length", "act_embed"))
        tok_mask = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
        impl = resolve_implementation(cfg.attention_impl)
        start, padding = None, None
        if cache is None:
            if positions is None:
                positions = (
                    jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
                    if attention_mask is None
                    else positions_from_mask(tok_mask)
                )
            # mask None means "plain causal", which lets fused kernels skip the mask tensor; padding
            # then travels as segment ids (splash: any side) or lengths (cuDNN: right padding only).
            mask = None
            if attention_mask is not None and impl == "splash":
                padding = {"segment_ids": tok_mask.astype(jnp.int32)}
            elif attention_mask is not None and impl == "cudnn" and right_padded:
                lengths = jnp.sum(tok_mask, axis=1, dtype=jnp.int32)
                padding = {"q_lengths": lengths, "kv_lengths": lengths}
            elif attention_mask is not None:
                mask = tok_mask[:, None, None, :] & jnp.tril(jnp.ones((t, t), bool))
        else:
            start = cache.end
            if positions is None:
                positions = positions_from_mask(tok_mask, cache.lengths)
            slot_mask = jax.lax.dynamic_update_slice(cache.mask, tok_mask, (0, start))
            slots = jnp.arange(cache.max_len)
            causal = slots[None, :] <= (start + jnp.arange(t))[:, None]  # [T, S]
            mask = slot_mask[:, None, None, :] & causal[None, None]
            if impl in ("cudnn", "splash"):
                impl = "xla"  # the fused kernels reject arbitrary masks / single-query steps
        cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
        idx = jnp.arange(cfg.num_layers, dtype=jnp.int32)

        def body(layer: Qwen2Layer, carry: tuple, i: jax.Array) -> tuple[tuple, None]:
            x, ck, cv = carry
            kv = None if cache is None else (ck[i], cv[i])
            x, new = layer(x, cos, sin, mask, kv, start, impl, padding)
            if new is not None:
                # only the T new slots of layer i are written, so the buffer updates in place
                ck = jax.lax.dynamic_update_slice(ck, new[0][None], (i, 0, start, 0, 0))
                cv = jax.lax.dynamic_update_slice(cv, new[1][None], (i, 0, start, 0, 0))
            return (x, ck, cv), None

        buffers = (None, None) if cache is None else (cache.k, cache.v)
        (x, ck, cv), _ = scan_layers(self.layers, body, (x, *buffers), idx, policy=cfg.remat)
        x = self.norm(x)
        if cache is not None:
            cache = cache.advance(ck, cv, tok_mask)
        return x, cache

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        positions: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        cache: KVCache | None = None,
        right_padded: bool = False,
    ) -> tuple[jax.Array, KVCache | None]:
        """Same inputs as :meth:`hidden_states` -> (logits [B, T, vocab] in the compute dtype, cache)."""
        h, cache = self.hidden_states(
            input_ids, inputs_embeds=inputs_embeds, positions=positions, attention_mask=attention_mask, cache=cache,
            right_padded=right_padded,
        )
        logits = self.head(h)
        return constrain(logits, ("batch", "length", "act_vocab")), cache

    def last_logits(
        self,
        inputs_embeds: jax.Array,
        attention_mask: jax.Array,
        cache: KVCache,
    ) -> tuple[jax.Array, KVCache]:
        """The sampler's step: appends ``inputs_embeds`` [B, T, D] to the cache and returns float32
        logits [B, vocab] of each row's last real token (the last position where the mask is 1),
        without materialising [B, T, vocab]."""
        h, cache = self.hidden_states(inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache)
        last = last_true_index(attention_mask)
        h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
        return self.head(h_last).astype(jnp.float32), cache


def last_true_index(mask: jax.Array) -> jax.Array:
    """mask [B, T] -> int32 [B]: index of the last nonzero entry per row (T - 1 if none)."""
    t = mask.shape[1]
    rev = jnp.argmax(mask.astype(bool)[:, ::-1], axis=1)
    return jnp.where(jnp.any(mask.astype(bool), axis=1), t - 1 - rev, t - 1).astype(jnp.int32)
