"""Tokenizer: the golden (official ``tokenizer_image_token``) ids, and a small BPE the test trains."""

import json
import os
import pickle

import numpy as np
import pytest

from data_pipeline.tokenizer import IMAGE_TOKEN_INDEX, QwenTokenizer

GOLDEN_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
    "How many chairs are in the room?<|im_end|>\n<|im_start|>assistant\n"
)

SENTENCES = [
    "How many chairs are in the room?",
    "What is the length of the longest dimension of the table?",
    "These are frames of a video.",
    "Answer with the option's letter from the given choices directly.",
    "Please answer the question using a single word or phrase.",
    "You are a helpful assistant.",
    "If I am standing by the sofa and facing the tv, is the lamp to my left?",
] * 4


def build_small_tokenizer(path: str, eos: str = "<|endoftext|>", vocab_size: int = 320) -> str:
    """Byte-level BPE trained on a few sentences + the Qwen special tokens, saved HF-style."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES, trainer)
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": eos, "pad_token": {"content": "<|endoftext|>"}, "model_max_length": 4096}, f)
    return path


def golden_vlm3r_tiny() -> str:
    """../shared/golden/vlm3r_tiny as conftest finds it, else $VLM3R_GOLDEN_DIR/vlm3r_tiny (a git
    worktree has no ../shared next to it); skips when neither exists."""
    from conftest import GOLDEN

    for root in (GOLDEN, os.environ.get("VLM3R_GOLDEN_DIR", "")):
        if root and os.path.isdir(os.path.join(root, "vlm3r_tiny")):
            return os.path.join(root, "vlm3r_tiny")
    pytest.skip(f"golden data not found at {GOLDEN} (set VLM3R_GOLDEN_DIR)")


@pytest.fixture(scope="module")
def small_tok(tmp_path_factory) -> QwenTokenizer:
    return QwenTokenizer.from_dir(build_small_tokenizer(str(tmp_path_factory.mktemp("tok"))))


def test_golden_tokenization_is_exact():
    d = golden_vlm3r_tiny()
    tok = QwenTokenizer.from_dir(os.path.join(d, "base_llava_video_qwen2"))
    inputs = np.load(os.path.join(d, "inputs.npz"))
    ids = tok.encode_with_placeholder(GOLDEN_PROMPT)
    np.testing.assert_array_equal(np.asarray(ids), inputs["input_ids"])
    assert ids.index(IMAGE_TOKEN_INDEX) == int(inputs["placeholder_index"]) == 33
    assert (tok.eos_id, tok.pad_id, tok.im_start_id, tok.im_end_id, tok.newline_id) == (290, 290, 291, 292, 198)
    assert len(tok) == 293  # len(tokenizer) of HF = the golden logits' vocabulary
    meta = json.load(open(os.path.join(d, "generation_meta.json")))
    assert meta["prompt"] == GOLDEN_PROMPT
    # decode with skip_special_tokens drops the ChatML markers and the placeholder
    assert tok.decode(ids) == "system\nYou are a helpful assistant.\nuser\n\nHow many chairs are in the room?\nassistant\n"


def test_small_tokenizer_roundtrip_and_specials(small_tok):
    t = small_tok
    assert (t.eos_id, t.pad_id, t.im_start_id, t.im_end_id) == (0, 0, 1, 2)
    for s in SENTENCES[:7] + ["Ünïcode ✓ 123.5 cm"]:
        assert t.decode(t.encode(s)) == s
    ids = t.encode_with_placeholder("a<image>b<image>")
    assert ids.count(-200) == 2 and ids[-1] == -200
    text = "<|im_start|>user\nhi<|im_end|>"
    ids = t.encode(text)
    assert ids[0] == 1 and ids[-1] == 2
    assert t.decode(ids, skip_special_tokens=False) == text
    assert t.decode(ids) == "user\nhi"
    t2 = pickle.loads(pickle.dumps(t))
    assert t2.encode(SENTENCES[0]) == t.encode(SENTENCES[0])


def test_eos_from_config_and_custom_placeholder(tmp_path):
    d = build_small_tokenizer(str(tmp_path / "t"), eos="<|im_end|>")
    t = QwenTokenizer.from_dir(d, placeholder_id=-7)
    assert t.eos_id == 2 and t.pad_id == 0
    assert t.encode_with_placeholder("x<image>")[-1] == -7
    with pytest.raises(ValueError, match="collides"):
        QwenTokenizer.from_dir(d, placeholder_id=5)


def test_bad_tokenizer_dirs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        QwenTokenizer.from_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        QwenTokenizer.from_dir(tmp_path / "empty")
    from tokenizers import Tokenizer, models

    bare = tmp_path / "bare"
    bare.mkdir()
    Tokenizer(models.BPE()).save(str(bare / "tokenizer.json"))
    with pytest.raises(ValueError, match="im_start"):
        QwenTokenizer.from_dir(bare)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{oops")
    with pytest.raises(ValueError, match="cannot be parsed"):
        QwenTokenizer.from_dir(tmp_path / "broken")
