"""Video decode + sampling (frames identified by their barcodes) and the two views."""

import os

import numpy as np
import pytest

from data_pipeline.image_preprocess import resize_bilinear, siglip_preprocess_np
from data_pipeline.synthetic_video import (
    decoded_indices,
    write_barcode_frames_dir,
    write_barcode_video,
    write_truncated_video,
    write_zero_frame_video,
)
from data_pipeline.video import VideoError, index_packets, load_video, read_frames, read_frames_full, sample_indices
from data_pipeline.views import ViewConfig, make_views, resize_bilinear_np


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    return {
        "h264": write_barcode_video(str(d / "a.mp4"), 150, fps=30, codec="libx264", gop=25),  # 5 s, B-frames
        "mpeg4": write_barcode_video(str(d / "b.mp4"), 97, fps=24, codec="mpeg4", gop=10),
        "short": write_barcode_video(str(d / "c.mp4"), 7, fps=30),
        "dir": write_barcode_frames_dir(str(d / "frames"), 11),
        "root": str(d),
    }


@pytest.mark.parametrize("total,n", [(150, 32), (97, 32), (32, 32), (7, 32), (1, 4), (1000, 8), (33, 32)])
def test_sample_indices_reference_rule(total, n):
    ref = np.linspace(0, total - 1, n).astype(int)  # process_video_with_decord, force_sample
    got = sample_indices(total, n)
    np.testing.assert_array_equal(got, ref)
    assert len(got) == n and got[0] == 0 and got[-1] == total - 1


@pytest.mark.parametrize("kind,total,fps", [("h264", 150, 30), ("mpeg4", 97, 24)])
def test_uniform_sampling_reads_right_frames(videos, kind, total, fps):
    v = load_video(videos[kind], 32)
    assert v.frames.shape == (32, 96, 128, 3) and v.frames.dtype == np.uint8
    np.testing.assert_array_equal(v.indices, np.linspace(0, total - 1, 32).astype(int))
    assert decoded_indices(v.frames) == v.indices.tolist()
    assert v.total_frames == total and v.fps == fps
    np.testing.assert_allclose(v.duration, total / fps)
    np.testing.assert_allclose(v.frame_times, v.indices / fps)


def test_short_video_repeats_indices(videos):
    v = load_video(videos["short"], 16)
    assert decoded_indices(v.frames) == np.linspace(0, 6, 16).astype(int).tolist()
    assert len(set(v.indices.tolist())) == 7


@pytest.mark.parametrize("kind", ["h264", "mpeg4"])
def test_seek_decode_equals_full_decode(videos, kind):
    n = len(index_packets(videos[kind])[0].pts)
    rng = np.random.default_rng(0)
    for idx in ([0], [n - 1], sample_indices(n, 32).tolist(), rng.integers(0, n, 9).tolist(), [n - 1, 3, 3, 40, 0]):
        seek = read_frames(videos[kind], idx)
        full = read_frames_full(videos[kind], idx)
        np.testing.assert_array_equal(seek, full)  # same pixels, not just same barcodes
        assert decoded_indices(seek) == list(idx)


def test_frame_directory(videos):
    v = load_video(videos["dir"], 5, frames_dir_fps=2.0)
    assert decoded_indices(v.frames) == [0, 2, 5, 7, 10]
    np.testing.assert_allclose(v.frame_times, [0, 1, 2.5, 3.5, 5])
    assert v.duration == 5.5


def test_bad_videos(videos, tmp_path):
    cases = {
        "missing_file": str(tmp_path / "nope.mp4"),
        "empty_video": write_zero_frame_video(str(tmp_path / "zero.mp4")),
        "corrupt_video": write_truncated_video(videos["h264"], str(tmp_path / "cut.mp4")),
    }
    (tmp_path / "zero_bytes.mp4").write_bytes(b"")
    (tmp_path / "garbage.mp4").write_bytes(b"\x00garbage" * 200)
    (tmp_path / "no_frames").mkdir()
    cases["empty_video "] = str(tmp_path / "zero_bytes.mp4")
    cases["corrupt_video "] = str(tmp_path / "garbage.mp4")
    cases["empty_video  "] = str(tmp_path / "no_frames")
    for kind, path in cases.items():
        with pytest.raises(VideoError) as e:
            load_video(path, 4)
        assert e.value.kind == kind.strip(), (path, e.value)
        assert os.path.basename(path) in str(e.value)


def test_views_match_reference_ops(videos):
    frames = load_video(videos["mpeg4"], 3).frames
    views = make_views(frames, ViewConfig(siglip_size=48, geometry_size=54))
    np.testing.assert_array_equal(views["frames"], siglip_preprocess_np(frames, 48))
    assert views["geometry_frames"].shape == (3, 54, 54, 3) and views["geometry_frames"].dtype == np.float32
    ref = np.asarray(resize_bilinear(views["frames"], (54, 54)))
    np.testing.assert_allclose(views["geometry_frames"], ref, atol=1e-5)  # jax weights round differently
    assert "geometry_frames" not in make_views(frames, ViewConfig(48, None))


@pytest.mark.torch
@pytest.mark.parametrize("src,dst", [((48, 48), (54, 54)), ((384, 384), (432, 432)), ((17, 23), (9, 40))])
def test_geometry_resize_matches_torch_interpolate(src, dst):
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(1).uniform(-1, 1, (2, *src, 3)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=dst, mode="bilinear", align_corners=False)
    got = resize_bilinear_np(x, dst)
    np.testing.assert_allclose(got, ref.permute(0, 2, 3, 1).numpy(), rtol=0, atol=3e-7)  # 1 ulp


def test_siglip_view_bit_identical_to_official_processor():
    """The golden stores the official SigLipImageProcessor's exact uint8 -> float map."""
    from test_tokenizer import golden_vlm3r_tiny

    d = np.load(os.path.join(golden_vlm3r_tiny(), "inputs.npz"))
    view = make_views(d["frames_uint8"], ViewConfig(384, 432))
    np.testing.assert_array_equal(view["frames"], d["pixel_value_lut"][d["frames_uint8"]])
    assert view["geometry_frames"].shape == (4, 432, 432, 3)


def test_missed_frame_is_retried_without_skipping(videos, monkeypatch):
    import data_pipeline.video as video

    real = video._decode_pts
    calls = []

    def lossy(c, index, want, skip_nonref, path):
        got = real(c, index, want, skip_nonref, path)
        calls.append((len(want), skip_nonref))
        if skip_nonref:
            got.pop(want[len(want) // 2])  # pretend the decoder dropped a wanted frame
        return got

    monkeypatch.setattr(video, "_decode_pts", lossy)
    idx = [5, 40, 77, 120]
    np.testing.assert_array_equal(read_frames(videos["h264"], idx), read_frames_full(videos["h264"], idx))
    assert calls == [(4, True), (1, False)]


@pytest.mark.parametrize("name,codec", [("b_frames.ts", "libx264"), ("program.mpg", "mpeg2video")])
def test_mpeg_ts_and_ps_containers(tmp_path, name, codec):
    """MPEG-TS seeks by dts and MPEG-PS timestamps move after a seek; both must still sample exactly."""
    path = write_barcode_video(str(tmp_path / name), 40, fps=25, codec=codec, gop=10)
    for n in (1, 7, 32):
        v = load_video(path, n)
        assert v.total_frames == 40 and decoded_indices(v.frames) == sample_indices(40, n).tolist()


@pytest.mark.parametrize("name", ["gops.mp4", "gops.ts"])
def test_seek_starts_at_the_wanted_keyframe(tmp_path, name):
    """A seek must land on the target GOP's keyframe, not one GOP early: MP4 seeks by pts, MPEG-TS
    by dts, and landing early decodes every GOP twice (2x slower sampling, same frames)."""
    import av

    from data_pipeline.video import _seek_key

    path = write_barcode_video(str(tmp_path / name), 60, fps=25, codec="libx264", gop=10)
    index, _ = index_packets(path)
    assert len(index.key_pts) >= 5
    with av.open(path) as c:
        stream = c.streams.video[0]
        for key in reversed(index.key_pts):
            first = next(p for p in _seek_key(c, stream, index, key) if p.pts is not None)
            assert first.pts == key and first.is_keyframe


def test_mp4_edit_list_that_trims_the_start(tmp_path):
    """Clips cut by stream copy start with packets the decoder never shows (an edit list)."""
    import struct

    import av

    src = write_barcode_video(str(tmp_path / "src.mp4"), 40, fps=30, gop=10)
    raw = bytearray(open(src, "rb").read())
    at = raw.find(b"elst")
    _, media_time = struct.unpack(">Ii", raw[at + 12 : at + 20])  # version 0: segment duration, media time
    with av.open(src) as c:
        frame_ticks = int(round(1 / (30 * c.streams.video[0].time_base)))
    struct.pack_into(">i", raw, at + 16, media_time + 3 * frame_ticks)  # the edit starts 3 frames later
    path = tmp_path / "trimmed.mp4"
    path.write_bytes(bytes(raw))
    v = load_video(str(path), 8)
    assert v.total_frames == 37
    assert decoded_indices(v.frames) == (3 + sample_indices(37, 8)).tolist()
