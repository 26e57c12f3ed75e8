"""Video-token splicing: placeholder at start/middle/end, several videos, right padding, labels."""

import numpy as np
import pytest

from vlm3r_jax.models.splice import IGNORE_INDEX, check_length, placeholder_positions, splice_video

PH = -200


def _manual(text, video, pos, mask, labels):
    rows = []
    for b in range(text.shape[0]):
        p = pos[b]
        emb = np.concatenate([text[b, :p], video[b], text[b, p + 1:]])
        m = np.concatenate([mask[b, :p], np.ones(video.shape[1], mask.dtype), mask[b, p + 1:]])
        lab = np.concatenate([labels[b, :p], np.full(video.shape[1], IGNORE_INDEX), labels[b, p + 1:]])
        rows.append((emb, m, lab))
    return [np.stack(x) for x in zip(*rows)]


@pytest.mark.parametrize("t,v,d", [(7, 5, 3), (4, 1, 2), (9, 13, 5)])
def test_splice_matches_manual(t, v, d):
    rng = np.random.default_rng(t)
    b = 3
    ids = rng.integers(0, 50, (b, t))
    pos = np.array([0, t // 2, t - 1])  # start, middle, end
    ids[np.arange(b), pos] = PH
    mask = np.ones((b, t), np.int32)
    mask[1, t - 2:] = 0 if t // 2 < t - 2 else 1  # right padding on one row
    labels = rng.integers(0, 50, (b, t))
    text = rng.standard_normal((b, t, d)).astype(np.float32)
    video = rng.standard_normal((b, v, d)).astype(np.float32)
    assert list(placeholder_positions(ids, PH)) == list(pos)
    out = splice_video(text, video, pos, mask, labels)
    emb, m, lab = _manual(text, video, pos, mask, labels)
    np.testing.assert_array_equal(np.asarray(out["inputs_embeds"]), emb)
    np.testing.assert_array_equal(np.asarray(out["attention_mask"]), m)
    np.testing.assert_array_equal(np.asarray(out["labels"]), lab)
    np.testing.assert_array_equal(np.asarray(out["positions"])[0], np.arange(t - 1 + v))
    assert int(np.asarray(out["video_mask"]).sum()) == b * v


def test_placeholder_errors():
    with pytest.raises(ValueError, match="row 0: 0 placeholders"):
        placeholder_positions(np.array([[1, 2, 3]]), PH)
    with pytest.raises(ValueError, match="row 1: 2 placeholders"):
        placeholder_positions(np.array([[1, PH, 3], [PH, PH, 3]]), PH)


def test_length_policy():
    assert check_length(10, 20, np.array([2]), 40) == 29
    with pytest.raises(ValueError, match="too long"):
        check_length(30, 20, np.array([2]), 40)
    assert check_length(30, 20, np.array([2]), 40, policy="truncate") == 40
    with pytest.raises(ValueError, match="too long"):  # the video itself would be cut
        check_length(30, 20, np.array([25]), 40, policy="truncate")
