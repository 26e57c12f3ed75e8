"""Qwen2 tokenizer from an HF directory (``tokenizer.json``) with the LLaVA video placeholder.

The reference (LLaVA ``tokenizer_image_token``) splits the prompt on ``"<image>"``, tokenizes the
text chunks on their own and inserts ``IMAGE_TOKEN_INDEX = -200`` between them; the model later
replaces that single id with the video embeddings. :meth:`QwenTokenizer.encode_with_placeholder`
does exactly that, so its ids match the reference tokenization bit for bit (checked against the
golden ``inputs.npz``).

Special tokens come from ``tokenizer_config.json`` (``eos_token``/``pad_token``, strings or
``{"content": ...}`` dicts) and ``added_tokens.json``; missing entries fall back to Qwen2's
``<|endoftext|>``. ``<|im_start|>``/``<|im_end|>`` must exist in the vocabulary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from tokenizers import Tokenizer

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"


def _token_content(entry: Any) -> str | None:
    if entry is None:
        return None
    if isinstance(entry, dict):
        return entry.get("content")
    return str(entry)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-export the tokenizer files") from e


class QwenTokenizer:
    """A ``tokenizers.Tokenizer`` plus the ids the chat template and the model need.

    Attributes: ``eos_id``, ``pad_id``, ``im_start_id``, ``im_end_id``, ``newline_id`` (id of
    ``"\\n"``, 198 for Qwen2), ``placeholder_id`` (default -200, never a real vocabulary id),
    ``vocab_size`` (= ``len(tokenizer)`` of HF, added tokens included).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        eos_token: str = ENDOFTEXT,
        pad_token: str | None = None,
        placeholder_id: int = IMAGE_TOKEN_INDEX,
        image_token: str = IMAGE_TOKEN,
        model_max_length: int | None = None,
        source: str = "<in-memory tokenizer>",
    ):
        self.tokenizer = tokenizer
        self.source = source
        self.image_token = image_token
        self.placeholder_id = int(placeholder_id)
        self.model_max_length = model_max_length
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        if 0 <= self.placeholder_id < self.vocab_size:
            raise ValueError(
                f"placeholder_id={placeholder_id} collides with a real token id (vocab {self.vocab_size}); "
                "use a negative id such as -200 (the reference IMAGE_TOKEN_INDEX)"
            )

        def need(tok: str, what: str) -> int:
            i = tokenizer.token_to_id(tok)
            if i is None:
                raise ValueError(
                    f"{source}: the {what} token {tok!r} is not in the vocabulary; the Qwen chat template "
                    "needs <|im_start|>, <|im_end|> and an eos token (add them as special tokens)"
                )
            return int(i)

        self.im_start_id = need(IM_START, "im_start")
        self.im_end_id = need(IM_END, "im_end")
        self.eos_token = eos_token
        self.eos_id = need(eos_token, "eos")
        self.pad_token = pad_token or eos_token
        self.pad_id = need(self.pad_token, "pad")
        nl = tokenizer.encode("\n", add_special_tokens=False).ids
        # The reference hard-codes 198 (Qwen2's "\n") as an always-unmasked label id.
        self.newline_id = int(nl[0]) if len(nl) == 1 else None
        self.special_ids = frozenset(
            int(t.id) if hasattr(t, "id") else int(i)
            for i, t in tokenizer.get_added_tokens_decoder().items()
            if getattr(t, "special", False)
        )
        # every added token (control tokens and the like) plus the video placeholder, longest first
        self._control_strings = sorted(
            {str(getattr(t, "content", "")) for t in tokenizer.get_added_tokens_decoder().values()} | {self.image_token},
            key=len, reverse=True)

    # --- loading -----------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | os.PathLike, placeholder_id: int = IMAGE_TOKEN_INDEX) -> QwenTokenizer:
        """Loads ``<path>/tokenizer.json`` (HF fast format) and the special tokens of
        ``tokenizer_config.json`` / ``added_tokens.json`` / ``special_tokens_map.json``."""
        path = os.fspath(path)
        tj = os.path.join(path, "tokenizer.json")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"tokenizer directory {path!r} does not exist")
        if not os.path.exists(tj):
            have = sorted(os.listdir(path))
            raise FileNotFoundError(
                f"{tj} not found (directory has {have}); save the tokenizer in the HF fast format, e.g. "
                "transformers.AutoTokenizer.from_pretrained(dir).save_pretrained(dir) writes tokenizer.json"
            )
        try:
            tok = Tokenizer.from_file(tj)
        except Exception as e:  # tokenizers raises a plain Exception on malformed files
            raise ValueError(f"{tj}: cannot be parsed by the `tokenizers` library ({e})") from e

        cfg: dict = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # later file wins
            p = os.path.join(path, name)
            if os.path.exists(p):
                cfg.update({k: v for k, v in _read_json(p).items() if v is not None})
        added_path = os.path.join(path, "added_tokens.json")
        if os.path.exists(added_path):
            added = _read_json(added_path)
            missing = [t for t, i in added.items() if tok.token_to_id(t) != i]
            if missing:
                raise ValueError(
                    f"{added_path}: tokens {missing} are not in {tj} with the same ids; the two files "
                    "come from different tokenizers"
                )
        eos = _token_content(cfg.get("eos_token")) or ENDOFTEXT
        pad = _token_content(cfg.get("pad_token")) or _token_content(cfg.get("unk_token")) or eos
        mml = cfg.get("model_max_length")
        mml = int(mml) if isinstance(mml, (int, float)) and mml < 1e12 else None
        return cls(tok, eos_token=eos, pad_token=pad, placeholder_id=placeholder_id, model_max_length=mml, source=path)

    # --- encode / decode ---------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Plain text -> ids (special tokens written in the text are recognised; no bos/eos added).
        ``"<image>"`` is NOT special here; use :meth:`encode_with_placeholder` for prompts."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def escape_control(self, text: str) -> str:
        """User text with each control-token string (``<|im_end|>``, ``<|im_start|>``, ``<image>``,
        ...) broken by a WORD JOINER (U+2060) after its first character, so it is read as plain
        text: a question cannot close its own turn and open an assistant or system turn, or add a
        second video placeholder. Text without such strings is returned unchanged."""
        for s in self._control_strings:
            if s and s in text:
                text = text.replace(s, s[0] + "\u2060" + s[1:])
        return text

    def encode_with_placeholder(self, text: str) -> list[int]:
        """Reference ``tokenizer_image_token``: tokenize the chunks around each ``<image>`` and put
        one ``placeholder_id`` in place of every occurrence."""
        chunks = text.split(self.image_token)
        ids: list[int] = []
        for i, chunk in enumerate(chunks):
            if i:
                ids.append(self.placeholder_id)
            if chunk:
                ids.extend(self.encode(chunk))
        return ids

    def decode(self, ids: Iterable[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """ids -> text; the placeholder and any negative/padding-label ids are dropped."""
        clean = [int(i) for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)
                 if 0 <= int(i) < self.vocab_size]
        return self.tokenizer.decode(clean, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, rows: Sequence[Sequence[int]] | np.ndarray, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(r, skip_special_tokens) for r in rows]

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def __len__(self) -> int:
        return self.vocab_size

    # Grain workers get a pickled copy; tokenizers.Tokenizer pickles via its JSON string.
    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["tokenizer"] = self.tokenizer.to_str()
        return d

    def __setstate__(self, d: dict) -> None:
        d = dict(d)
        d["tokenizer"] = Tokenizer.from_str(d["tokenizer"])
        self.__dict__.update(d)


def load_tokenizer(path: str | os.PathLike, placeholder_id: int = IMAGE_TOKEN_INDEX) -> QwenTokenizer:
    """Alias of :meth:`QwenTokenizer.from_dir`."""
    return QwenTokenizer.from_dir(path, placeholder_id=placeholder_id)
