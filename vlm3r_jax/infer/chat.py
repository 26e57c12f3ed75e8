"""Multi-turn questions about one video with the video and the KV cache computed once.

    chat = model.chat("scene.mp4")                 # SigLIP + CUT3R + fusion + prefill run here
    chat.ask("How many chairs are in the room?")    # only the question's tokens are prefilled
    chat.ask("Which one is closest to the door?")   # sees the first question and its answer

The prefix (system prompt, ``<|im_start|>user\\n`` and the video block) is prefilled once into a
fixed-size KV cache. With ``keep_history=True`` (a conversation) every turn continues from the
cache the previous turn left behind, so a follow-up question costs its own tokens plus the
answer, never the video again. With ``keep_history=False`` every question starts from the
prefix cache (independent questions about the same video, as in the official evaluation).

The conversation is kept as token ids (``token_ids``): the answer tokens stay as they were
generated rather than being re-tokenised from text, so a from-scratch forward over ``token_ids``
gives the same next-token distribution as the cached path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline.tokenizer import IM_END, IM_START
from vlm3r_jax.infer.engine import VLM3REngine
from vlm3r_jax.infer.sampling import SamplingConfig, generate, stop_ids_array

DEFAULT_TURN_BUDGET = 1024  # cache slots after the prefix when max_context is not given
TURN_BUCKET = 32


class ContextFullError(ValueError):
    """The conversation no longer fits the chat's KV cache."""


class ChatSession:
    """A conversation about one video (or none). Create it with :meth:`VLM3RModel.chat`."""

    def __init__(self, engine: VLM3REngine, frames: np.ndarray | None, *, keep_history: bool = True,
                 max_context: int | None = None):
        """frames: float [F, S, S, 3] SigLIP-normalised (see ``VLM3RModel.prepare_video``) or None."""
        self.engine = engine
        self.keep_history = keep_history
        tok = engine.tokenizer
        # The prefix ends right after the placeholder (with a video) or after the system turn (text
        # only): both are token boundaries that the full-prompt tokenisation also has.
        probe = engine.prompt_ids("?", with_video=frames is not None).tolist()
        if frames is not None:
            cut = probe.index(engine.video_token_id) + 1
        else:
            cut = len(tok.encode(f"{IM_START}system\n{engine.template.system}{IM_END}\n"))
        self._prefix_ids = probe[:cut]
        self._first_turn = frames is None  # text-only: the first question opens the user turn itself
        n_video = engine.cfg.num_video_tokens(frames.shape[0]) if frames is not None else 0
        prefix_len = len(self._prefix_ids) - (1 if frames is not None else 0) + n_video
        limit = engine.cfg.model_max_length
        self.max_context = min(limit, max_context or prefix_len + DEFAULT_TURN_BUDGET)
        if prefix_len >= self.max_context:
            raise ContextFullError(
                f"the video alone takes {prefix_len} tokens but the chat holds {self.max_context} "
                f"(model_max_length {limit}); use fewer frames or a larger max_context")
        self._prefix_cache = engine.prefill_cache(self._prefix_ids, frames, self.max_context)
        self._prefix_len = prefix_len
        self.reset()

    # --- state ------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the questions asked so far (the video prefix stays cached)."""
        self._cache = self._prefix_cache
        self._used = self._prefix_len
        self._pending: list[int] = []  # tail of token_ids not yet in the cache
        self.history: list[tuple[str, str]] = []
        # the whole conversation as the model sees it (placeholder included)
        self.token_ids: list[int] = list(self._prefix_ids)
        self.last_prompt_ids: np.ndarray | None = None
        self.last_tokens: np.ndarray | None = None  # the last answer's ids (stop token included)

    @property
    def context_used(self) -> int:
        """Cache slots in use (the video counts as its video tokens)."""
        return self._used + len(self._pending)

    def _turn_ids(self, question: str, first: bool) -> list[int]:
        tok = self.engine.tokenizer
        question = tok.escape_control(question)
        if first and not self._first_turn:
            # with a video the first user turn is already open: "<image>" then "\n{question}"
            return tok.encode(f"\n{question}{IM_END}\n{IM_START}assistant\n")
        lead = "" if first else "\n"
        return tok.encode(f"{lead}{IM_START}user\n{question}{IM_END}\n{IM_START}assistant\n")

    # --- asking -----------------------------------------------------------------------------------
    def ask(self, question: str, max_new_tokens: int = 64, *, temperature: float = 0.0, top_p: float = 1.0,
            top_k: int = 0, repetition_penalty: float = 1.0, seed: int = 0) -> str:
        """Answers ``question``; with ``keep_history`` the answer joins the conversation."""
        first = not self.history or not self.keep_history
        if not self.keep_history:
            self.reset()
        turn_ids = self._turn_ids(question, first)
        turn = self._pending + turn_ids
        # padded to a multiple of TURN_BUCKET (masked slots) so turns of similar length share one
        # compilation; the padding costs cache slots but never changes the result
        width = -(-len(turn) // TURN_BUCKET) * TURN_BUCKET
        need = self._used + width + max_new_tokens
        if need > self.max_context:
            raise ContextFullError(
                f"prompt too long for the context: this turn needs {need} cache slots but the chat holds "
                f"{self.max_context} "
                f"({self._used} already used by the video and earlier turns); call reset(), ask with "
                "keep_history=False, lower max_new_tokens or open the chat with a larger max_context")
        m = self.engine
        scfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                              repetition_penalty=repetition_penalty)
        stop, pad = stop_ids_array(m.cfg.llm.eos_token_ids)
        ids = np.full((1, width), m.tokenizer.pad_id, np.int32)
        ids[0, :len(turn)] = turn
        mask = (np.arange(width) < len(turn)).astype(np.int32)[None]
        out = _ask(m.step_fn, m.embed_fn, m.params, self._cache, jnp.asarray(ids), jnp.asarray(mask),
                   jax.random.key(seed), stop, pad, scfg)
        n = int(out.num_tokens[0])
        gen = [int(t) for t in np.asarray(out.tokens[0, :n])]
        # the cache now holds the turn and every generated token except the last one
        self._cache = out.cache
        self._used += width + n - 1
        im_end = m.tokenizer.im_end_id
        self._pending = gen[-1:] + ([] if gen[-1] == im_end else [im_end])
        # what a from-scratch forward needs to reproduce this answer: model.generate(last_prompt_ids)
        self.last_prompt_ids = np.asarray(self.token_ids + turn_ids, np.int32)
        self.last_tokens = np.asarray(gen, np.int32)
        self.token_ids += turn_ids + gen[:-1] + self._pending
        answer = m.tokenizer.decode(gen, skip_special_tokens=True).strip()
        self.history.append((question, answer))
        return answer

    __call__ = ask


@functools.partial(jax.jit, static_argnames=("step_fn", "embed_fn", "config"))
def _ask(step_fn, embed_fn, params, cache, turn_ids, turn_mask, rng, stop, pad, config):
    embeds = embed_fn(params, turn_ids)
    return generate(step_fn, embed_fn, params, cache, embeds, turn_mask, rng, stop, pad, config=config,
                    return_cache=True)
