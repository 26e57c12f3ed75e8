"""The ``qwen_1_5`` chat template of LLaVA-Video / VLM-3R, the training labels and truncation.

Rendered conversation (ChatML; ``\\n`` after every role name and after every ``<|im_end|>``)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<image>\\n{question}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>\\n          (training; repeated per turn)
    <|im_start|>assistant\\n                             (inference: generation prompt)

Labels follow the official ``preprocess_qwen`` (VLM-3R ``llava/train/train.py``): every message is
encoded on its own; system and user messages get -100, assistant messages keep their ids
*including* their ``<|im_start|>assistant\\n`` header and the closing ``<|im_end|>\\n``; finally
every ``\\n`` (id 198 in Qwen2), ``<|im_start|>`` and ``<|im_end|>`` is un-masked wherever it is,
also inside system/user messages (``label_policy="official"``). ``label_policy="answers_only"``
keeps only the answer text and its ``<|im_end|>``. Labels are aligned with ``input_ids`` (not
shifted): the loss predicts ``labels[t+1]`` from position ``t``, as HF does. The placeholder's
label is always -100.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from data_pipeline.tokenizer import IM_END, IM_START, IMAGE_TOKEN, QwenTokenizer

IGNORE_INDEX = -100
DEFAULT_SYSTEM = "You are a helpful assistant."
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}


class ConversationError(ValueError):
    """A record whose conversation cannot be rendered (kind names the bad-input category)."""

    def __init__(self, message: str, kind: str = "bad_conversation"):
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # crosses process boundaries (Grain workers) intact
        return (ConversationError, (self.args[0], self.kind))


class TruncationError(ConversationError):
    def __init__(self, message: str):
        super().__init__(message, kind="too_long")

    def __reduce__(self):
        return (TruncationError, (self.args[0],))


@dataclasses.dataclass(frozen=True)
class TemplateConfig:
    """``truncation``: ``"error"`` raises :class:`TruncationError` when the spliced sequence is
    longer than ``max_length``; ``"truncate_text"`` drops text tokens from the end (never the
    placeholder / video tokens; a placeholder that would be cut is still an error).
    ``video_tokens``: how many embeddings the placeholder becomes (F * 210 for VLM-3R), counted
    against ``max_length`` as the reference truncates after splicing."""

    system: str = DEFAULT_SYSTEM
    add_time_instruction: bool = False
    label_policy: str = "official"  # or "answers_only"
    max_length: int = 32768
    truncation: str = "error"  # or "truncate_text"
    video_tokens: int = 0

    def __post_init__(self) -> None:
        if self.label_policy not in ("official", "answers_only"):
            raise ValueError(f"label_policy must be 'official' or 'answers_only', got {self.label_policy!r}")
        if self.truncation not in ("error", "truncate_text"):
            raise ValueError(f"truncation must be 'error' or 'truncate_text', got {self.truncation!r}")


def _role(turn: Mapping) -> tuple[str, str]:
    """Accepts LLaVA ``{"from", "value"}`` and OpenAI ``{"role", "content"}`` turns."""
    if "from" in turn:
        role, text = turn.get("from"), turn.get("value")
    else:
        role, text = turn.get("role"), turn.get("content")
    if role not in ROLE_ALIASES:
        raise ConversationError(f"unknown speaker {role!r} (expected human/gpt or user/assistant)")
    if not isinstance(text, str):
        raise ConversationError(f"turn of {role!r} has no text value (got {type(text).__name__})")
    return ROLE_ALIASES[role], _placeholder_first(text)


def _placeholder_first(text: str) -> str:
    """The reference's ``preprocess_multimodal``: a turn whose one ``<image>`` is not at its start
    gets it moved to the front, on a line of its own."""
    if text.count(IMAGE_TOKEN) == 1 and not text.startswith(IMAGE_TOKEN):
        return f"{IMAGE_TOKEN}\n{text.replace(IMAGE_TOKEN, '').strip()}".strip()
    return text


def render_message(role: str, text: str) -> str:
    return f"{IM_START}{role}\n{text}{IM_END}\n"


def render_qwen_1_5(
    conversation: Sequence[Mapping], system: str = DEFAULT_SYSTEM, add_generation_prompt: bool = False
) -> str:
    """Conversation turns -> the ChatML prompt string (see the module docstring)."""
    out = render_message("system", system)
    for turn in conversation:
        role, text = _role(turn)
        out += render_message(role, text)
    if add_generation_prompt:
        out += f"{IM_START}assistant\n"
    return out


def time_instruction(duration: float, frame_times: Sequence[float]) -> str:
    """The reference's training-time sentence. Note: no space before "Please"."""
    times = ",".join(f"{t:.2f}s" for t in frame_times)
    return (
        f"The video lasts for {duration:.2f} seconds, and {len(frame_times)} frames are uniformly sampled "
        f"from it. These frames are located at {times}.Please answer the following questions related to this video."
    )


def add_time_instruction(first_user_text: str, duration: float, frame_times: Sequence[float]) -> str:
    """``<image>\\n{sentence}\\n{text without <image>}``, as the reference rewrites the first human turn
    (the original ``<image>\\n`` leaves its newline behind, so the question follows a blank line)."""
    rest = first_user_text.replace(IMAGE_TOKEN, "")
    return f"{IMAGE_TOKEN}\n{time_instruction(duration, frame_times)}\n{rest}"


@dataclasses.dataclass
class Tokenized:
    """``input_ids`` / ``labels``: int32 [T] (one placeholder id in input_ids);
    ``placeholder_index``: position of the placeholder; ``truncated``: tokens dropped."""

    input_ids: np.ndarray
    labels: np.ndarray
    placeholder_index: int
    truncated: int = 0


def _check_placeholder(conversation: Sequence[Mapping], need: bool) -> None:
    n = 0
    for i, turn in enumerate(conversation):
        role, text = _role(turn)
        c = text.count(IMAGE_TOKEN)
        if c and (role != "user" or i != _first_user(conversation)):
            raise ConversationError(
                f"'<image>' found in turn {i} ({role}); only the first user turn may hold the video placeholder",
                kind="bad_placeholder",
            )
        n += c
    if need and n != 1:
        raise ConversationError(
            f"the first user turn must contain exactly one '<image>' placeholder, found {n}; "
            "prefix the question with '<image>\\n'",
            kind="missing_placeholder",
        )


def _first_user(conversation: Sequence[Mapping]) -> int:
    for i, turn in enumerate(conversation):
        if _role(turn)[0] == "user":
            return i
    raise ConversationError("conversation has no user turn")


def _finish(
    tok: QwenTokenizer, ids: list[int], labels: list[int], cfg: TemplateConfig, require_placeholder: bool = True
) -> Tokenized:
    if tok.placeholder_id not in ids:
        if require_placeholder:
            raise ConversationError("no video placeholder in the tokenized prompt", kind="missing_placeholder")
        # a text-only prompt: no video tokens count against max_length, placeholder_index is -1
        cfg = dataclasses.replace(cfg, video_tokens=0)
        ph = -1
    else:
        ph = ids.index(tok.placeholder_id)
    extra = max(cfg.video_tokens - 1, 0)
    total = len(ids) + extra
    cut = 0
    if total > cfg.max_length:
        keep = cfg.max_length - extra
        if cfg.truncation == "error" or keep <= ph:
            raise TruncationError(
                f"sequence of {total} tokens ({len(ids)} text + {cfg.video_tokens} video) exceeds max_length="
                f"{cfg.max_length}" + ("; the video placeholder itself would be cut" if keep <= ph else "")
                + "; raise max_length, use fewer frames, or set truncation='truncate_text'"
            )
        cut = len(ids) - keep
        ids, labels = ids[:keep], labels[:keep]
    return Tokenized(np.asarray(ids, np.int32), np.asarray(labels, np.int32), ph, cut)


def tokenize_conversation(
    tok: QwenTokenizer,
    conversation: Sequence[Mapping],
    cfg: TemplateConfig = TemplateConfig(),
    *,
    require_placeholder: bool = True,
) -> Tokenized:
    """Training: full conversation -> ids + labels (see the module docstring for the masking)."""
    if not conversation:
        raise ConversationError("empty conversation")
    _check_placeholder(conversation, require_placeholder)
    ids: list[int] = []
    lab: list[int] = []

    def add(role: str, text: str, trained: bool) -> None:
        if trained and cfg.label_policy == "answers_only":
            head = tok.encode(f"{IM_START}{role}\n")
            body = tok.encode_with_placeholder(text) + [tok.im_end_id]
            tail = tok.encode("\n")
            ids.extend(head + body + tail)
            lab.extend([IGNORE_INDEX] * len(head) + body + [IGNORE_INDEX] * len(tail))
            return
        enc = tok.encode_with_placeholder(render_message(role, text))
        ids.extend(enc)
        lab.extend(enc if trained else [IGNORE_INDEX] * len(enc))

    add("system", cfg.system, False)
    turns = list(conversation)
    # The reference drops a leading assistant turn so the conversation starts with the user.
    if _role(turns[0])[0] == "assistant":
        turns = turns[1:]
    if not any(_role(t)[0] == "assistant" for t in turns):
        raise ConversationError("training record has no assistant (gpt) answer", kind="no_answer")
    for turn in turns:
        role, text = _role(turn)
        add(role, text, role == "assistant")
    if cfg.label_policy == "official":
        always = {tok.im_start_id, tok.im_end_id} | ({tok.newline_id} if tok.newline_id is not None else set())
        lab = [i if i in always else y for i, y in zip(ids, lab, strict=True)]
    lab = [IGNORE_INDEX if i == tok.placeholder_id else y for i, y in zip(ids, lab, strict=True)]
    return _finish(tok, ids, lab, cfg, require_placeholder)


def tokenize_prompt(
    tok: QwenTokenizer,
    conversation: Sequence[Mapping],
    cfg: TemplateConfig = TemplateConfig(),
    *,
    require_placeholder: bool = True,
) -> Tokenized:
    """Inference/eval: the conversation so far (ending with a user turn) + the generation prompt.
    Labels are all -100."""
    if not conversation:
        raise ConversationError("empty conversation")
    _check_placeholder(conversation, require_placeholder)
    text = render_qwen_1_5(conversation, cfg.system, add_generation_prompt=True)
    ids = tok.encode_with_placeholder(text)
    return _finish(tok, ids, [IGNORE_INDEX] * len(ids), cfg, require_placeholder)


def question_prompt(question: str) -> list[dict]:
    """The single-turn conversation of the official eval: ``<image>\\n{question}``."""
    return [{"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"}]
