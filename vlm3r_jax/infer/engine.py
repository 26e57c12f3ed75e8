"""``VLM3REngine``: the small public object that sessions and evaluators run a VLM-3R on.

It holds what decoding needs and nothing about where the weights came from: the config, the
``(graphdef, params)`` split of the model, the tokenizer and chat template, and the pure
functions the shared sampler (:func:`vlm3r_jax.infer.sampling.generate`) calls. As gemma's
``ChatSampler`` is built around a sampler, :class:`~vlm3r_jax.infer.chat.ChatSession`,
:class:`~vlm3r_jax.infer.stream.VideoStream` and the sharded evaluator are built around an engine;
:class:`~vlm3r_jax.infer.vlm3r_model.VLM3RModel` owns one (``model.engine``) and adds loading,
export and the one-call ``answer``.

Jitted functions live at module level with ``graphdef`` as a static argument (as in every
inference handle here): one compilation per architecture, shared by every handle built on it.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipeline.chat_template import TemplateConfig, question_prompt, tokenize_prompt
from data_pipeline.tokenizer import QwenTokenizer
from vlm3r_jax.infer.sampling import SamplingConfig, generate, stop_ids_array
from vlm3r_jax.models.splice import check_length, placeholder_positions
from vlm3r_jax.models.vlm3r import VLM3RConfig


def _left_align(embeds: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Right-padded rows -> left-padded rows (the sampler wants every prompt to end at one slot)."""
    t = mask.shape[1]
    n = jnp.sum(mask, axis=1)
    shift = (t - n)[:, None]
    src = jnp.mod(jnp.arange(t)[None, :] - shift, t)
    emb = jnp.take_along_axis(embeds, src[..., None], axis=1)
    new_mask = (jnp.arange(t)[None, :] >= shift).astype(mask.dtype)
    return emb, new_mask


@functools.partial(jax.jit, static_argnames=("graphdef",))
def forward_logits(graphdef: nnx.GraphDef, params: nnx.State, input_ids: jax.Array, frames: jax.Array | None,
                   attention_mask: jax.Array | None) -> jax.Array:
    """The spliced forward: ids int [B, T] + frames [B, F, S, S, 3] -> logits [B, L, vocab]."""
    logits, _ = nnx.merge(graphdef, params)(input_ids, frames, attention_mask=attention_mask)
    return logits


@functools.partial(jax.jit, static_argnames=("graphdef",))
def prefill_embeds(graphdef: nnx.GraphDef, params: nnx.State, input_ids: jax.Array, frames: jax.Array | None,
                   attention_mask: jax.Array, geometry_tokens: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Right-padded ids [B, T] (+ frames, + cached CUT3R tokens [B, F, G, Dg]) -> left-aligned
    prompt embeddings [B, L, D] and mask [B, L]."""
    sp = nnx.merge(graphdef, params).embed_prompt(input_ids, frames, attention_mask=attention_mask,
                                                  geometry_tokens=geometry_tokens)
    return _left_align(sp["inputs_embeds"], sp["attention_mask"])


@functools.partial(jax.jit, static_argnames=("graphdef", "capacity"))
def prefill_cache(graphdef: nnx.GraphDef, params: nnx.State, ids: jax.Array, frames: jax.Array | None, *,
                  capacity: int) -> Any:
    """ids [1, T] (+ frames [1, F, S, S, 3]) -> a KV cache of ``capacity`` slots holding them."""
    model = nnx.merge(graphdef, params)
    if frames is None:
        embeds = model.llm.embed_tokens(ids)
    else:
        embeds = model.embed_prompt(ids, frames)["inputs_embeds"]
    cache = model.llm.init_cache(1, capacity)
    _, cache = model.llm.last_logits(embeds, jnp.ones(embeds.shape[:2], jnp.int32), cache)
    return cache


def _step(graphdef, params, cache, embeds, mask):
    return nnx.merge(graphdef, params).llm.last_logits(embeds, mask, cache)


def _embed(graphdef, params, ids):
    return nnx.merge(graphdef, params).llm.embed_tokens(ids)


@functools.cache
def _step_fns(graphdef: nnx.GraphDef) -> tuple[Any, Any]:
    """Stable function objects per architecture: the sampler's jit cache is keyed on them."""
    return functools.partial(_step, graphdef), functools.partial(_embed, graphdef)


class VLM3REngine:
    """``cfg``, ``graphdef``, ``params``, ``tokenizer``, ``template`` and the sampler's
    ``step_fn(params, cache, embeds, mask)`` / ``embed_fn(params, ids)``; see the module docstring."""

    def __init__(self, cfg: VLM3RConfig, graphdef: nnx.GraphDef, params: nnx.State, tokenizer: QwenTokenizer,
                 template: TemplateConfig):
        self.cfg = cfg
        self.graphdef = graphdef
        self.params = params
        self.tokenizer = tokenizer
        self.template = template
        self.step_fn, self.embed_fn = _step_fns(graphdef)

    @property
    def video_token_id(self) -> int:
        return self.cfg.video_token_id

    def prefill(self, params: nnx.State, input_ids: jax.Array, frames: jax.Array | None,
                attention_mask: jax.Array, geometry_tokens: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """:func:`prefill_embeds` of this architecture (params explicit: callable inside a jit)."""
        return prefill_embeds(self.graphdef, params, input_ids, frames, attention_mask, geometry_tokens)

    def prefill_cache(self, prefix_ids: list[int], frames: np.ndarray | None, capacity: int) -> Any:
        """Prefills a fresh cache of ``capacity`` slots with ``prefix_ids`` (one video's frames
        float [F, S, S, 3] replace its placeholder)."""
        ids = jnp.asarray([prefix_ids], jnp.int32)
        fr = None if frames is None else jnp.asarray(frames)[None]
        return prefill_cache(self.graphdef, self.params, ids, fr, capacity=capacity)

    def prompt_ids(self, question: str, with_video: bool = True) -> np.ndarray:
        """The official single-turn prompt (``<image>\\n`` + question, qwen_1_5 template). Control
        tokens typed in the question are read as text (``QwenTokenizer.escape_control``)."""
        question = self.tokenizer.escape_control(question)
        conv = question_prompt(question) if with_video else [{"from": "human", "value": question}]
        return tokenize_prompt(self.tokenizer, conv, self.template, require_placeholder=with_video).input_ids

    def check(self, input_ids: Any, frames: Any, num_frames: int | None = None) -> tuple[np.ndarray, Any]:
        """Validates a batch; ``num_frames`` checks the length for a video given as features."""
        input_ids = np.asarray(input_ids)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if frames is None:
            n_video = self.cfg.num_video_tokens(num_frames) if num_frames else 0
            pos = placeholder_positions(input_ids, self.video_token_id) if num_frames else np.zeros(1, int)
            check_length(input_ids.shape[1] + (0 if num_frames else 1), n_video, pos, self.cfg.model_max_length,
                         "error")
            return input_ids, None
        frames = jnp.asarray(frames)
        if frames.ndim == 4:
            frames = frames[None]
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be float [B, N, H, W, 3] (SigLIP-normalised), got {tuple(frames.shape)}")
        if not jnp.issubdtype(frames.dtype, jnp.floating):
            raise TypeError(f"frames must be float SigLIP-normalised pixels in [-1, 1], got {frames.dtype}; "
                            "use data_pipeline.image_preprocess.siglip_preprocess_np on uint8 frames")
        if frames.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{input_ids.shape[0]} prompts but {frames.shape[0]} videos")
        pos = placeholder_positions(input_ids, self.video_token_id)
        check_length(input_ids.shape[1], self.cfg.num_video_tokens(frames.shape[1]), pos,
                     self.cfg.model_max_length, "error")
        return input_ids, frames

    def decode(self, embeds: jax.Array, mask: jax.Array, *, max_new_tokens: int, temperature: float = 0.0,
               top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0, seed: int = 0) -> Any:
        """Left-aligned prompt embeddings [B, T, D] + mask -> the sampler's output (fresh cache of
        T + max_new_tokens slots, stopping at the LLM's eos ids)."""
        cache = nnx.merge(self.graphdef, self.params).llm.init_cache(embeds.shape[0], embeds.shape[1] + max_new_tokens)
        scfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                              repetition_penalty=repetition_penalty)
        stop_ids, pad_id = stop_ids_array(self.cfg.llm.eos_token_ids)
        return generate(self.step_fn, self.embed_fn, self.params, cache, embeds, mask, jax.random.key(seed),
                        stop_ids, pad_id, config=scfg)
