"""Inference for people: answer == a manual forward + greedy loop, multi-turn chat with a reused
KV prefix == recomputing from scratch, streaming == the offline pass, sampling options."""

from __future__ import annotations

import _vlm3r_helpers as H
import numpy as np
import pytest

from vlm3r_jax.infer.chat import ContextFullError
from vlm3r_jax.infer.stream import FrameBuffer, StreamConfig

QUESTIONS = ["How many chairs are in the room?", "Which object is closest to the door?",
             "What is the distance between the table and the sofa in meters?"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return H.small_model(str(tmp_path_factory.mktemp("m")), seed=3, num_frames=5)


@pytest.fixture(scope="module")
def frames():
    return H.video(5, size=41, seed=1)  # odd size: resized by the preprocessor


def _decode_manual(model, ids, pixels, n):
    """Greedy decoding with a full forward (no KV cache) per new token. The prompt is right-padded
    to one length so the forward compiles once; the logits are read at the last real position."""
    ids = list(ids)
    t = len(ids) + n
    v = model.cfg.num_video_tokens(pixels.shape[0])
    out = []
    eos = set(model.cfg.llm.eos_token_ids)
    for _ in range(n):
        row = np.full((1, t), model.tokenizer.pad_id, np.int32)
        mask = np.zeros((1, t), np.int32)
        row[0, :len(ids)] = ids
        mask[0, :len(ids)] = 1
        logits = np.asarray(model.logits(row, pixels[None], attention_mask=mask))
        tok = int(np.argmax(logits[0, len(ids) - 1 + v - 1]))
        out.append(tok)
        if tok in eos:
            break
        ids.append(tok)
    return out


def test_answer_equals_manual_forward_and_greedy(model, frames):
    n = 6
    ids = model.prompt_ids(QUESTIONS[0])
    pixels = model.prepare_video(frames)
    manual = _decode_manual(model, ids, pixels, n)
    toks = model.generate(ids[None], pixels[None], max_new_tokens=n)[0]
    assert list(toks[:len(manual)]) == manual
    text = model.answer(frames, QUESTIONS[0], max_new_tokens=n)
    assert text == model.tokenizer.decode(manual, skip_special_tokens=True).strip()


def test_chat_reuses_prefix_and_matches_scratch(model, frames):
    pixels = model.prepare_video(frames)
    chat = model.chat(frames, max_context=400)
    for q in QUESTIONS[:2]:
        chat.ask(q, max_new_tokens=5)
        # from scratch: the whole conversation so far as one prompt, full prefill, same decoding
        scratch = model.generate(chat.last_prompt_ids[None], pixels[None], max_new_tokens=5)[0]
        got = chat.last_tokens
        np.testing.assert_array_equal(scratch[:len(got)], got)
    assert len(chat.history) == 2 and chat.context_used < 400
    assert chat.token_ids[:len(chat.last_prompt_ids)] == list(chat.last_prompt_ids)


def test_chat_independent_questions_equal_answer(model, frames):
    chat = model.chat(frames, keep_history=False)
    for q in QUESTIONS[:2]:
        assert chat.ask(q, max_new_tokens=5) == model.answer(frames, q, max_new_tokens=5)


def test_chat_text_only_and_context_full(model):
    chat = model.chat(None, max_context=160)
    a = chat.ask("How many chairs are in the room?", max_new_tokens=4)
    assert a == model.answer(None, "How many chairs are in the room?", max_new_tokens=4)
    with pytest.raises(ContextFullError, match="cache slots"):
        for _ in range(20):
            chat.ask("What is the distance between the table and the sofa in meters?", max_new_tokens=4)


def test_stream_equals_offline(model, frames):
    import jax.numpy as jnp

    stream = model.stream(max_frames=8, select="uniform")
    toks = [np.asarray(stream.push(f)["geometry_tokens"]) for f in frames]
    pixels = model.prepare_video(frames)
    offline = np.asarray(model.model.geometry_tokens(jnp.asarray(pixels)[None]))[0]
    err = np.max(np.abs(np.stack(toks) - offline))
    assert err <= 1e-5, err
    q = QUESTIONS[1]
    assert stream.answer(q, max_new_tokens=5) == model.answer(frames, q, max_new_tokens=5, num_frames=5)


def test_stream_memory_is_bounded_and_uniform(model, frames):
    stream = model.stream(max_frames=3, select="uniform")
    for i in range(13):
        stream.push(frames[i % len(frames)])
    assert len(stream.buffer) <= 6 and stream.num_frames == 13
    kept = stream.kept_frame_indices
    assert kept[0] == 0 and all(k % stream.buffer.stride == 0 for k in kept)
    assert isinstance(stream.answer(QUESTIONS[0], max_new_tokens=3), str)
    win = model.stream(max_frames=2, select="window")
    win.extend(frames)
    assert win.kept_frame_indices == [3, 4]


def test_frame_buffer_policies():
    buf = FrameBuffer(8, "uniform")
    for i in range(1000):
        buf.add(i, i)
    assert len(buf) <= 16 and buf.stride >= 64
    chosen = [i for i, _ in buf.chosen()]
    assert len(chosen) == 8 and chosen[0] == 0 and chosen[-1] >= 1000 - 2 * buf.stride
    gaps = np.diff(chosen)
    assert gaps.max() <= 2 * gaps.min() + buf.stride
    with pytest.raises(ValueError, match="select"):
        StreamConfig(select="random")


def test_sampling_options_deterministic(model, frames):
    kw = dict(max_new_tokens=6, temperature=1.5, top_p=0.9, top_k=50)
    a = model.answer(frames, QUESTIONS[2], seed=1, **kw)
    assert a == model.answer(frames, QUESTIONS[2], seed=1, **kw)
    outs = {model.answer(frames, QUESTIONS[2], seed=s, **kw) for s in range(2, 6)}
    assert len(outs | {a}) > 1
    ids = model.prompt_ids(QUESTIONS[2])[None]
    pixels = model.prepare_video(frames)[None]
    eos = set(model.cfg.llm.eos_token_ids)
    body = lambda row: [t for t in row if t not in eos]  # noqa: E731
    no_repeat = body(model.generate(ids, pixels, max_new_tokens=12, repetition_penalty=50.0)[0])
    assert len(set(no_repeat)) == len(no_repeat), "a huge penalty forbids repeats"
    # a penalty below 1 rewards what was said: greedy then cycles through a few tokens
    loop = body(model.generate(ids, pixels, max_new_tokens=12, repetition_penalty=1e-3)[0])
    assert len(set(loop)) <= len(loop) // 3, loop


def test_answer_batch_over_different_videos_equals_one_by_one(model, frames):
    other = H.video(5, size=37, seed=9)
    qs = [QUESTIONS[0], QUESTIONS[2]]
    batch = model.answer_batch([frames, other], qs, max_new_tokens=5)
    assert batch == [model.answer(frames, qs[0], max_new_tokens=5), model.answer(other, qs[1], max_new_tokens=5)]
