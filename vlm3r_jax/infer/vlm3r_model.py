"""``VLM3RModel``: what :func:`vlm3r_jax.api.load_vlm3r` returns.

Owns the tokenizer, the (graphdef, params) of a :class:`~vlm3r_jax.models.vlm3r.VLM3R` and the
jitted pure functions: ``logits`` (the spliced forward), ``generate`` (video encoding + splice
once, then the shared KV-cache sampler of :mod:`vlm3r_jax.infer.sampling`), ``answer``
(decode + sample a video file or array, the official prompt, greedy decoding), ``chat``
(multi-turn with a reused KV prefix, :mod:`vlm3r_jax.infer.chat`), ``stream`` (online frames,
:mod:`vlm3r_jax.infer.stream`) and ``reconstruct`` (CUT3R's points and cameras for pictures).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipeline.chat_template import TemplateConfig
from data_pipeline.image_preprocess import siglip_preprocess_np
from data_pipeline.tokenizer import QwenTokenizer
from data_pipeline.video import load_video, sample_indices
from vlm3r_jax.convert.hub import resolve_vlm3r
from vlm3r_jax.convert.vlm3r_export import export, find_geometry
from vlm3r_jax.convert.vlm3r_ours import load_ours, read_num_frames, save_ours
from vlm3r_jax.convert.vlm3r_release import load_release
from vlm3r_jax.infer.chat import ChatSession
from vlm3r_jax.infer.engine import VLM3REngine, forward_logits
from vlm3r_jax.infer.stream import StreamConfig, VideoStream
from vlm3r_jax.models.host_init import fill_random
from vlm3r_jax.models.vlm3r import VLM3R, VLM3RConfig, abstract_vlm3r

OURS_CONFIG = "vlm3r_config.json"


def _is_llava_dir(path: str) -> bool:
    """A directory with a LLaVA-Qwen config.json and safetensors weights."""
    import json

    cfg = os.path.join(path, "config.json")
    if not os.path.exists(cfg) or not any(f.endswith(".safetensors") for f in os.listdir(path)):
        return False
    try:
        with open(cfg, encoding="utf-8") as f:
            d = json.load(f)
        return isinstance(d, dict) and d.get("model_type") == "llava_qwen"
    except (OSError, ValueError):
        return False


class VLM3RModel:
    """A loaded VLM-3R for notebooks and scripts (see docs/architecture.md, Public API)."""

    def __init__(self, cfg: VLM3RConfig, model: VLM3R, tokenizer: QwenTokenizer, *, num_frames: int = 32,
                 template: TemplateConfig | None = None, info: dict | None = None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.num_frames = num_frames
        self.template = template or TemplateConfig(max_length=cfg.model_max_length)
        self.info = info or {}
        model.eval()
        graphdef, params = nnx.split(model)
        # what sessions (chat, stream) and the sharded evaluator run on
        self.engine = VLM3REngine(cfg, graphdef, params, tokenizer, self.template)

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, base: str | None = None, geometry: str | None = None, *,
                        dtype: str = "float32", vision_config: str | dict | None = None, keep_lora: bool = False,
                        num_frames: int | None = None, attention_impl: str = "auto") -> VLM3RModel:
        """``path``: a directory written by :meth:`save_pretrained` / our trainer, or a released
        LoRA dir (``adapter_config.json`` + adapter weights + ``non_lora_trainables.bin`` +
        ``config.json``) together with ``base`` (LLaVA-Video-Qwen2 dir) and ``geometry`` (CUT3R .pth).
        ``num_frames``: frames sampled per video by ``answer``/``chat``; None = the count our
        checkpoint was trained with (recorded by the trainer), else 32 as the release. Each of
        ``path``, ``base``, ``geometry`` may be a Hub repo id (``org/name[@revision]``)."""

        path, base, geometry = resolve_vlm3r(path, base, geometry)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model directory does not exist: {path}")
        if num_frames is None:

            num_frames = read_num_frames(path) or 32  # None for a released dir (no vlm3r_config.json)
        if os.path.exists(os.path.join(path, OURS_CONFIG)):
            return cls._from_ours(path, dtype=dtype, num_frames=num_frames)
        released = any(os.path.exists(os.path.join(path, f)) for f in
                       ("adapter_config.json", "non_lora_trainables.bin"))
        if not released and base is None and _is_llava_dir(path):
            # a merged export / full fine-tune: the LLaVA-Video-Qwen2 dir is the whole model
            released, base, path = True, path, None
        if released and geometry is None:

            geometry = find_geometry(path or base)
        if not released and base is None:
            raise FileNotFoundError(
                f"{path} is neither a vlm3r_jax checkpoint (no {OURS_CONFIG}) nor a released VLM-3R LoRA dir "
                "(no adapter_config.json / non_lora_trainables.bin). For a released model pass "
                "base=<LLaVA-Video-Qwen2 dir> and geometry=<CUT3R .pth>.")
        if base is None:
            raise FileNotFoundError(f"{path} is a released LoRA dir: pass base=<the LLaVA-Video-Qwen2 base directory>")
        if path is not None and os.path.abspath(path) == os.path.abspath(base):
            path = None

        cfg, model, info = load_release(path, base, geometry, dtype=dtype, vision_config=vision_config,
                                        keep_lora=keep_lora, attention_impl=attention_impl)
        tok = QwenTokenizer.from_dir(info["tokenizer_dir"])
        return cls(cfg, model, tok, num_frames=num_frames, info=info)

    @classmethod
    def from_config(cls, cfg: VLM3RConfig, tokenizer: QwenTokenizer, *, seed: int = 0,
                    num_frames: int = 32) -> VLM3RModel:
        """A randomly initialised model (host-drawn weights, :mod:`vlm3r_jax.models.host_init`):
        for tests, notebooks and benchmarks that need the architecture, not trained weights."""

        model = fill_random(abstract_vlm3r(cfg), seed)
        return cls(cfg, model, tokenizer, num_frames=num_frames)

    @classmethod
    def _from_ours(cls, path: str, *, dtype: str, num_frames: int) -> VLM3RModel:
        cfg, model = load_ours(path, dtype=dtype)
        return cls(cfg, model, QwenTokenizer.from_dir(path), num_frames=num_frames)

    def save_pretrained(self, path: str) -> None:
        """Writes our format: ``vlm3r_config.json`` + ``model.safetensors`` + tokenizer files."""

        save_ours(path, self.cfg, nnx.merge(self.graphdef, self.params), self.tokenizer, num_frames=self.num_frames)

    def export(self, out_dir: str, layout: str = "release", **kwargs: Any) -> dict[str, str | None]:
        """Writes the model in the official VLM-3R layout (``layout="release"``: base
        LLaVA-Video-Qwen2 dir + PEFT LoRA dir with ``non_lora_trainables.bin`` + CUT3R ``.pth``;
        needs attached adapters, e.g. ``load_vlm3r(..., keep_lora=True)``) or as one merged
        LLaVA-Video-Qwen2 dir (``layout="merged"``, LoRA folded into the weights). Tensors the model
        does not hold are copied from the checkpoint it was loaded from (``passthrough=True``).
        Returns ``{"base", "lora", "geometry"}`` paths for :func:`vlm3r_jax.api.load_vlm3r`.
        See docs/export.md for the options (``adapter_format``, ``dtype``, ...)."""

        kwargs.setdefault("tokenizer", self.tokenizer)
        kwargs.setdefault("source", self.info or None)
        return export(self.model, out_dir, layout=layout, **kwargs)

    @property
    def video_token_id(self) -> int:
        return self.cfg.video_token_id

    @property
    def model(self) -> VLM3R:
        return nnx.merge(self.graphdef, self.params)

    @property
    def graphdef(self) -> nnx.GraphDef:
        return self.engine.graphdef

    @property
    def params(self) -> nnx.State:
        return self.engine.params

    # --- public API -------------------------------------------------------------------------------
    def logits(self, input_ids: Any, frames: Any, attention_mask: Any = None) -> jax.Array:
        """input_ids int [B, T] with one placeholder per row (``video_token_id``); frames float
        [B, N, H, W, 3] SigLIP-normalised -> logits [B, T - 1 + N_video_tokens, vocab] (right padding)."""
        ids, frames = self.engine.check(input_ids, frames)
        mask = None if attention_mask is None else jnp.asarray(attention_mask)
        return forward_logits(self.graphdef, self.params, jnp.asarray(ids), frames, mask)

    def generate(self, input_ids: Any, frames: Any, *, attention_mask: Any = None, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0,
                 seed: int = 0) -> np.ndarray:
        """Right-padded prompts + videos -> new token ids int [B, max_new_tokens] (eos-padded).
        Stops at ``<|im_end|>`` as the official eval does. Greedy unless ``temperature > 0``;
        the result is a deterministic function of ``seed``."""
        ids, frames = self.engine.check(input_ids, frames)
        b, t = ids.shape
        mask = jnp.ones((b, t), jnp.int32) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        embeds, emb_mask = self.engine.prefill(self.params, jnp.asarray(ids), frames, mask)
        out = self.engine.decode(embeds, emb_mask, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                           top_k=top_k, repetition_penalty=repetition_penalty, seed=seed)
        return np.asarray(out.tokens)

    def prepare_video(self, video: Any, num_frames: int | None = None, *, for_llm: bool = True) -> np.ndarray:
        """A path (video file or frame directory) or uint8 [N, H, W, 3] -> float [n, S, S, 3]
        (n = ``num_frames`` sampled by the reference rule, S = the tower's image size).
        ``for_llm``: first refuse a frame count the LLM's context cannot hold (:meth:`check_frames`)."""

        n = num_frames or self.num_frames
        if for_llm:
            self.check_frames(n)
        if isinstance(video, (str, os.PathLike)):
            if not os.path.exists(video):
                raise FileNotFoundError(f"video not found: {video}")
            frames = load_video(os.fspath(video), n).frames
        else:
            frames = np.asarray(video)
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
                raise ValueError(f"video array must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
            if frames.shape[0] != n:
                frames = frames[sample_indices(frames.shape[0], n)]
        return siglip_preprocess_np(frames, self.cfg.vision.image_size)

    def check_frames(self, num_frames: int) -> None:
        """Refuses (ValueError) a frame count whose video tokens cannot fit the context even with a
        one-token question, before any frame is decoded or embedded (10000 frames would otherwise
        take minutes and tens of GB before the full length check)."""
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.engine.check(self.prompt_ids("?"), None, num_frames=num_frames)

    def prompt_ids(self, question: str, with_video: bool = True) -> np.ndarray:
        """The official single-turn prompt (``<image>\\n`` + question, qwen_1_5 template). Control
        tokens typed in the question are read as text (``QwenTokenizer.escape_control``)."""
        return self.engine.prompt_ids(question, with_video)

    def answer(self, video: Any, question: str, max_new_tokens: int = 64, *, num_frames: int | None = None,
               temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0,
               seed: int = 0) -> str:
        """Answers ``question`` about ``video`` (path or uint8 [N, H, W, 3]; None = text only)."""
        ids = self.prompt_ids(question, with_video=video is not None)
        frames = None if video is None else self.prepare_video(video, num_frames)[None]
        toks = self.generate(ids[None], frames, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             top_k=top_k, repetition_penalty=repetition_penalty, seed=seed)[0]
        return self.tokenizer.decode([int(t) for t in toks], skip_special_tokens=True).strip()

    def chat(self, video: Any = None, *, num_frames: int | None = None, keep_history: bool = True,
             max_context: int | None = None) -> ChatSession:
        """A multi-turn session about ``video`` (path or uint8 [N, H, W, 3]; None = text only):
        the video and the KV-cache prefix are computed once; ``session.ask(question)`` answers.
        ``keep_history=False`` makes every question independent (same prefix, no earlier turns).
        ``max_context``: cache size in tokens (default: the prefix + 1024)."""
        frames = None if video is None else self.prepare_video(video, num_frames)
        return ChatSession(self.engine, frames, keep_history=keep_history, max_context=max_context)

    def stream(self, config: StreamConfig | None = None, **kwargs: Any) -> VideoStream:
        """An online session: ``push(frame)`` one frame at a time (constant cost per frame),
        ``answer(question)`` at any moment. ``config`` or keyword fields of :class:`StreamConfig`."""
        if config is None:
            config = StreamConfig(**kwargs)
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        return VideoStream(self.engine, config)

    def reconstruct(self, video: Any, num_frames: int | None = None, points_stride: int = 4) -> dict[str, np.ndarray]:
        """CUT3R's reconstruction of ``video`` as VLM-3R sees it (the sampled frames at the
        geometry resolution): points [P, 3] in the first camera's frame, colors [P, 3] in [0, 1],
        conf [P], camera_c2w [F, 4, 4], frames uint8 [F, S, S, 3]. For pictures (see ``viz``)."""
        if self.cfg.geometry is None:
            raise ValueError("this model has no geometry encoder (config.geometry is None)")
        pixels = self.prepare_video(video, num_frames, for_llm=False)
        stream = VideoStream(self.engine, StreamConfig(max_frames=pixels.shape[0], select="window", with_heads=True,
                                                points_stride=points_stride))
        for f in pixels:
            stream.push(f)
        rec = stream.reconstruction()
        rec["frames"] = np.clip((pixels + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
        return rec

    def answer_batch(self, videos: Sequence[Any], questions: Sequence[str], max_new_tokens: int = 16, *,
                     num_frames: int | None = None, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                     repetition_penalty: float = 1.0, seed: int = 0) -> list[str]:
        """Several (video, question) pairs in one batch (right-padded, then left-aligned for decoding)."""
        rows = [self.prompt_ids(q) for q in questions]
        t = max(len(r) for r in rows)
        pad = self.tokenizer.pad_id
        ids = np.full((len(rows), t), pad, np.int32)
        mask = np.zeros((len(rows), t), np.int32)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        frames = np.stack([self.prepare_video(v, num_frames) for v in videos])
        toks = self.generate(ids, frames, attention_mask=mask, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, seed=seed)
        return [self.tokenizer.decode([int(x) for x in row], skip_special_tokens=True).strip() for row in toks]
