"""Train a small byte-level BPE tokenizer with the Qwen special tokens (for models trained from
scratch on a generated dataset, e.g. the README demo). Real checkpoints ship their tokenizer."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def build_tokenizer(texts: Iterable[str], out_dir: str, vocab_size: int = 512, model_max_length: int = 4096,
                    split_digits: bool = False) -> str:
    """Writes ``tokenizer.json`` + ``tokenizer_config.json`` (HF fast format) to ``out_dir``;
    loadable with :meth:`data_pipeline.tokenizer.QwenTokenizer.from_dir`.

    ``split_digits``: one token per digit, as Qwen2's own pre-tokenizer does. Without it BPE
    merges frequent numbers into single tokens ("204", "1.4"), so a model trained from scratch
    sees every numeric answer as an unrelated class."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "model_max_length": model_max_length}, f)
    return out_dir
