"""Ask a VLM-3R a question about a video from the command line.

    python -m launch.infer --checkpoint runs/demo/model --video scene.mp4 \\
        --question "How many chairs are in the room?" [--config.num_frames=32] [--config.temperature=0] \\
        [--viz out.png]

``--checkpoint`` is a directory written by our trainer (``vlm3r_config.json``) or a released
VLM-3R LoRA directory; for the latter also pass ``--base`` (the LLaVA-Video-Qwen2 directory) and
``--geometry`` (the CUT3R ``.pth``). ``--viz`` saves a picture of CUT3R's reconstruction (point
cloud from above and in perspective, camera path with frame numbers, the frames) with the
question and answer as its caption. ``--question`` may be given several times: the questions
become one conversation over the same video (the video is encoded once). Sampling settings are
the fields of ``configs/infer.py`` (``--config.max_new_tokens=16``, ...).

Example: python -m launch.infer --checkpoint runs/demo/model --video runs/demo/data/synthetic/scene_0000.mp4 \\
    --question 'How many chairs are in the room?' --viz answer.png

Exit codes: 0 answered, 2 bad input (missing/unreadable video or checkpoint, prompt too long).
"""

from __future__ import annotations

import math
import os
import sys
import time

from absl import flags
from ml_collections import config_flags

from launch import cli

# the spellings of the argparse release: accepted for one more release with a note
LEGACY = {"--frames": "--config.num_frames", "--max-new-tokens": "--config.max_new_tokens",
          "--temperature": "--config.temperature", "--top-p": "--config.top_p", "--top-k": "--config.top_k",
          "--repetition-penalty": "--config.repetition_penalty", "--seed": "--config.seed",
          "--dtype": "--config.dtype"}
DTYPES = ("float32", "bfloat16")


def parse_args(argv: list[str]) -> flags.FlagValues:
    """``argv`` (no program name) -> the parsed flags; a usage error exits 2 with one line."""
    def define(fv: flags.FlagValues, full_argv: list[str]) -> None:
        config_flags.DEFINE_config_file("config", cli.resolve_spec("configs/infer.py"),
                                        "Sampling settings (configs/infer.py).", flag_values=fv,
                                        lock_config=True, sys_argv=full_argv)
        flags.DEFINE_string("checkpoint", None, "Our checkpoint dir, or a released VLM-3R LoRA dir.", flag_values=fv)
        flags.DEFINE_string("base", None, "Released layout only: the LLaVA-Video-Qwen2 base dir.", flag_values=fv)
        flags.DEFINE_string("geometry", None, "Released layout only: the CUT3R .pth checkpoint.", flag_values=fv)
        flags.DEFINE_string("video", None, "A video file (mp4, ...) or a directory of frame images.", flag_values=fv)
        flags.DEFINE_multi_string("question", [], "The question; repeat the flag to ask follow-up questions in one "
                                  "conversation.", flag_values=fv)
        flags.DEFINE_string("viz", None, "Save a picture of the reconstruction here (OUT.png).", flag_values=fv)

    fv, rest = cli.parse_local(argv, define, __doc__, legacy=LEGACY)
    cfg = fv.config
    problems = [f"unexpected arguments {rest}" if rest else "",
                "--checkpoint is required" if not fv.checkpoint else "",
                "--video is required" if not fv.video else "",
                "--question is required" if not fv.question else "",
                f"--config.num_frames={cfg.num_frames}: at least 1 (or 0 = the checkpoint's)" if cfg.num_frames < 0 else "",
                f"--config.max_new_tokens={cfg.max_new_tokens}: at least 1" if cfg.max_new_tokens < 1 else "",
                f"--config.dtype={cfg.dtype!r}: one of {list(DTYPES)}" if cfg.dtype not in DTYPES else ""]
    for field in ("temperature", "top_p", "repetition_penalty"):
        v = float(cfg[field])
        if not math.isfinite(v) or v < 0:
            problems.append(f"--config.{field}={v}: must be a finite number >= 0")
    if msg := next((p for p in problems if p), ""):
        cli.usage_error(msg)
    return fv


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


_VIZ_EXTS = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def _viz_problem(path: str) -> str | None:
    """Why the picture could not be written at ``path`` (checked before minutes of work), or None."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return "is a directory; name the picture file, e.g. OUT.png"
    if not path.lower().endswith(_VIZ_EXTS):
        return f"the picture must be one of {', '.join(_VIZ_EXTS)}"
    if not os.path.isdir(folder):
        return f"the folder {folder} does not exist"
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return "is not writable"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = args.config
    frames = cfg.num_frames or None
    if not os.path.exists(args.video):
        return _fail(f"video not found: {args.video} (give a video file or a directory of frames)")
    from vlm3r_jax.convert.hub import parse_repo_id

    if not os.path.isdir(args.checkpoint) and parse_repo_id(args.checkpoint) is None:
        return _fail(f"checkpoint directory not found: {args.checkpoint} (give a directory or a Hub repo id org/name)")
    if args.viz and (msg := _viz_problem(args.viz)):
        return _fail(f"--viz {args.viz}: {msg}")
    if any(not q.strip() for q in args.question):
        return _fail("--question is empty")
    for q in args.question:
        try:
            q.encode("utf-8")
        except UnicodeEncodeError:  # argv bytes that are not UTF-8 arrive as lone surrogates
            return _fail(f"--question {q.encode('utf-8', 'replace').decode()!r} is not valid UTF-8 text")

    from data_pipeline.chat_template import ConversationError
    from data_pipeline.video import VideoError
    from vlm3r_jax import api

    t0 = time.time()
    try:
        model = api.load_vlm3r(args.checkpoint, base=args.base, geometry=args.geometry, dtype=cfg.dtype,
                               num_frames=frames)
    except (FileNotFoundError, ValueError) as e:
        return _fail(f"cannot load the model from {args.checkpoint}: {e}")
    print(f"loaded {args.checkpoint} in {time.time() - t0:.1f}s", file=sys.stderr)
    sampling = dict(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                    repetition_penalty=cfg.repetition_penalty, seed=cfg.seed)
    try:
        chat = model.chat(args.video, num_frames=frames)
        answers = []
        for q in args.question:
            answers.append(chat.ask(q, max_new_tokens=cfg.max_new_tokens, **sampling))
            print(answers[-1] if len(args.question) == 1 else f"Q: {q}\nA: {answers[-1]}", flush=True)
    except VideoError as e:
        return _fail(f"cannot read the video: {e}")
    except (ConversationError, ValueError) as e:
        return _fail(str(e))
    if args.viz:
        from vlm3r_jax.infer.viz import render_reconstruction

        rec = model.reconstruct(args.video, num_frames=frames)
        try:
            render_reconstruction(rec, args.viz, question=" / ".join(args.question), answer=" / ".join(answers))
        except OSError as e:  # e.g. the disk filled up or the folder went away during the run
            return _fail(f"--viz {args.viz}: cannot write the picture ({e})")
        print(f"saved the reconstruction picture to {args.viz}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
