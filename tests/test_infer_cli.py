"""``python -m launch.infer``: help, answers (one question and a conversation), the --viz picture,
and clear errors with exit code 2 for a missing or corrupt video, a missing checkpoint and a
question too long for the context."""

from __future__ import annotations

import os
import subprocess
import sys

import _vlm3r_helpers as H
import pytest

from launch import infer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from data_pipeline.scenes import write_mp4

    d = tmp_path_factory.mktemp("cli")
    model = H.small_model(str(d), seed=5, num_frames=4)
    ckpt = str(d / "model")
    model.save_pretrained(ckpt)
    video = str(d / "scene.mp4")
    write_mp4(video, H.video(6, size=48, seed=2), fps=4)
    bad = d / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    return {"ckpt": ckpt, "video": video, "bad": str(bad), "dir": d}


def test_help_explains_every_flag():
    r = subprocess.run([sys.executable, "-m", "launch.infer", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0
    for flag in ("--checkpoint", "--video", "--question", "--config.num_frames=0", "--config.temperature=0.0",
                 "--viz", "--base", "--config.repetition_penalty=1.0", "discourages repeats", "Example",
                 "--max-new-tokens -> --config.max_new_tokens"):  # the last: the deprecated spelling
        assert flag in r.stdout


def test_answers_and_draws(files, capsys):
    """Also the deprecation path: the argparse-era spellings still work, with one note."""
    out_png = str(files["dir"] / "rec.png")
    rc = infer.main(["--checkpoint", files["ckpt"], "--video", files["video"], "--question", "How many chairs?",
                     "--question", "Which object is closest to the door?", "--frames", "4", "--max-new-tokens", "4",
                     "--viz", out_png])
    out, err = capsys.readouterr()
    assert rc == 0 and err.count("deprecated flag spelling") <= 1
    assert out.count("Q: ") == 2 and out.count("A: ") == 2
    assert os.path.getsize(out_png) > 10_000


@pytest.mark.parametrize("case", ["missing_video", "corrupt_video", "missing_checkpoint", "too_long"])
def test_bad_input_is_explained(files, capsys, case):
    args = {"--checkpoint": files["ckpt"], "--video": files["video"], "--question": "How many chairs?",
            "--config.num_frames": "4"}
    expect = {"missing_video": "video not found", "corrupt_video": "cannot read the video",
              "missing_checkpoint": "checkpoint directory not found", "too_long": "prompt too long"}[case]
    if case == "missing_video":
        args["--video"] = str(files["dir"] / "nope.mp4")
    elif case == "corrupt_video":
        args["--video"] = files["bad"]
    elif case == "missing_checkpoint":
        args["--checkpoint"] = str(files["dir"] / "no_model")
    else:
        args["--question"] = "how far is the chair from the table " * 200
    rc = infer.main([x for kv in args.items() for x in kv])
    err = capsys.readouterr().err
    assert rc == 2
    assert expect in err, err


def test_checkpoint_remembers_its_frame_count(files, tmp_path):
    """A model trained on N frames per video answers with N unless told otherwise (the demo trains
    on 8; sampling 32 at inference would feed it 4x the video tokens it ever saw)."""
    import json

    from vlm3r_jax import api
    from vlm3r_jax.convert.vlm3r_ours import read_num_frames

    assert read_num_frames(files["ckpt"]) == 4  # save_pretrained records the model's own count
    assert api.load_vlm3r(files["ckpt"]).num_frames == 4
    assert api.load_vlm3r(files["ckpt"], num_frames=6).num_frames == 6
    old = tmp_path / "old"  # a checkpoint from before the field existed: the release's 32
    os.makedirs(old)
    for name in os.listdir(files["ckpt"]):
        src = os.path.join(files["ckpt"], name)
        if name == "vlm3r_config.json":
            d = json.load(open(src))
            d.pop("num_frames")
            json.dump(d, open(old / name, "w"))
        else:
            os.symlink(src, old / name)
    assert read_num_frames(str(old)) is None and api.load_vlm3r(str(old)).num_frames == 32
    # the CLI's default follows the checkpoint: 4 frames, so a 4-frame video is not resampled to 32
    assert infer.main(["--checkpoint", files["ckpt"], "--video", files["video"], "--question", "How many chairs?",
                       "--config.max_new_tokens=2"]) == 0


def _args(files, **over):
    a = {"--checkpoint": files["ckpt"], "--video": files["video"], "--question": "How many chairs?", "--frames": "4",
         "--max-new-tokens": "2", **over}
    return [x for kv in a.items() for x in kv]


def test_too_many_frames_refused_before_decoding(files, capsys, monkeypatch):
    import data_pipeline.video as video

    def no_decode(*a, **k):
        raise AssertionError("decoded frames for a frame count the context cannot hold")

    monkeypatch.setattr(video, "load_video", no_decode)
    assert infer.main(_args(files, **{"--frames": "100000"})) == 2
    assert "prompt is too long" in capsys.readouterr().err


def test_decompression_bomb_frame_is_one_line(files, capsys, monkeypatch):
    from PIL import Image

    d = files["dir"] / "frames"
    d.mkdir(exist_ok=True)
    for i in range(2):
        Image.new("RGB", (64, 64)).save(d / f"{i:03d}.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64*64 > 2x the limit: Pillow refuses
    assert infer.main(_args(files, **{"--video": str(d)})) == 2
    err = capsys.readouterr().err
    assert "too large to decode safely" in err and "Traceback" not in err


@pytest.mark.parametrize("flag,value", [("--temperature", "nan"), ("--temperature", "inf"), ("--top-p", "nan"),
                                        ("--repetition-penalty", "-inf"), ("--temperature", "-1")])
def test_non_finite_sampling_values_refused(files, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        infer.parse_args([*_args(files), f"{flag}={value}"])
    assert e.value.code == 2 and "finite number" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["directory", "extension", "no_folder", "invalid_utf8"])
def test_output_paths_and_question_checked_before_work(files, capsys, monkeypatch, case):
    from vlm3r_jax import api

    def no_load(*a, **k):
        raise AssertionError("loaded the model before checking the arguments")

    monkeypatch.setattr(api, "load_vlm3r", no_load)
    over, expect = {
        "directory": ({"--viz": str(files["dir"])}, "is a directory"),
        "extension": ({"--viz": str(files["dir"] / "out.txt")}, "must be one of"),
        "no_folder": ({"--viz": str(files["dir"] / "scene.mp4" / "out.png")}, "does not exist"),
        "invalid_utf8": ({"--question": b"caf\xe9?".decode("utf-8", "surrogateescape")}, "not valid UTF-8"),
    }[case]
    assert infer.main(_args(files, **over)) == 2
    assert expect in capsys.readouterr().err



@pytest.mark.parametrize("args, msg", [(["--config.dtype=int8"], "one of ['float32', 'bfloat16']"),
                                       (["--config.top_k=abc"], "top_k takes an int (default 0)"),
                                       (["--config.topk=3"], "valid keys under config"),
                                       (["--unknown"], "Unknown command line flag 'unknown'")])
def test_bad_flags_are_one_line(args, msg, capsys):
    with pytest.raises(SystemExit) as e:
        infer.parse_args(["--checkpoint", "c", "--video", "v", "--question", "q", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
