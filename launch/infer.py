"""Ask a VLM-3R a question about a video from the command line.

    python -m launch.infer --checkpoint runs/demo/model --video scene.mp4 \\
        --question "How many chairs are in the room?" [--frames 32] [--temperature 0] [--viz out.png]

``--checkpoint`` is a directory written by our trainer (``vlm3r_config.json``) or a released
VLM-3R LoRA directory; for the latter also pass ``--base`` (the LLaVA-Video-Qwen2 directory) and
``--geometry`` (the CUT3R ``.pth``). Checkpoint and base may be Hub repo ids
(``Journey9ni/vlm-3r-llava-qwen2-lora``, ``lmms-lab/LLaVA-NeXT-Video-7B-Qwen2``, ``@revision`` pins one). ``--viz`` saves a picture of CUT3R's reconstruction (point
cloud from above and in perspective, camera path with frame numbers, the frames) with the
question and answer as its caption. ``--question`` may be given several times: the questions
become one conversation over the same video (the video is encoded once).

Exit codes: 0 answered, 2 bad input (missing/unreadable video or checkpoint, prompt too long).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m launch.infer", description=__doc__.split("\n\n")[0],
        epilog="Example: python -m launch.infer --checkpoint runs/demo/model --video runs/demo/data/"
               "synthetic/scene_0000.mp4 --question 'How many chairs are in the room?' --viz answer.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="our checkpoint dir, or a released VLM-3R LoRA dir; either may be a Hub repo id org/name[@rev]")
    p.add_argument("--base", default=None, help="released layout only: the LLaVA-Video-Qwen2 base dir or Hub repo id")
    p.add_argument("--geometry", default=None, help="released layout only: the CUT3R .pth checkpoint")
    p.add_argument("--video", required=True, help="a video file (mp4, ...) or a directory of frame images")
    p.add_argument("--question", required=True, action="append",
                   help="the question; repeat the flag to ask follow-up questions in one conversation")
    p.add_argument("--frames", type=int, default=None,
                   help="frames sampled uniformly from the video (default: what the checkpoint was trained with, "
                        "recorded by our trainer; 32 for a released model)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit in tokens (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --temperature > 0)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k best tokens only (0 = all)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the output is deterministic given it)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="parameter/compute dtype")
    p.add_argument("--viz", default=None, metavar="OUT.png", help="save a picture of the reconstruction here")
    args = p.parse_args(argv)
    for flag in ("temperature", "top_p", "repetition_penalty"):
        v = getattr(args, flag)
        if not math.isfinite(v) or v < 0:
            p.error(f"--{flag.replace('_', '-')} must be a finite number >= 0, got {v}")
    if args.frames is not None and args.frames < 1:
        p.error(f"--frames must be >= 1, got {args.frames}")
    if args.max_new_tokens < 1:
        p.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    return args


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
    args = parse_args(argv)
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
        model = api.load_vlm3r(args.checkpoint, base=args.base, geometry=args.geometry, dtype=args.dtype,
                               num_frames=args.frames)
    except (FileNotFoundError, ValueError) as e:
        return _fail(f"cannot load the model from {args.checkpoint}: {e}")
    print(f"loaded {args.checkpoint} in {time.time() - t0:.1f}s", file=sys.stderr)
    sampling = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                    repetition_penalty=args.repetition_penalty, seed=args.seed)
    try:
        model.check_frames(args.frames or model.num_frames)
        chat = model.chat(args.video, num_frames=args.frames)
        answers = []
        for q in args.question:
            answers.append(chat.ask(q, max_new_tokens=args.max_new_tokens, **sampling))
            print(answers[-1] if len(args.question) == 1 else f"Q: {q}\nA: {answers[-1]}", flush=True)
    except VideoError as e:
        return _fail(f"cannot read the video: {e}")
    except (ConversationError, ValueError) as e:
        return _fail(str(e))
    if args.viz:
        from vlm3r_jax.infer.viz import render_reconstruction

        rec = model.reconstruct(args.video, num_frames=args.frames)
        try:
            render_reconstruction(rec, args.viz, question=" / ".join(args.question), answer=" / ".join(answers))
        except OSError as e:  # e.g. the disk filled up or the folder went away during the run
            return _fail(f"--viz {args.viz}: cannot write the picture ({e})")
        print(f"saved the reconstruction picture to {args.viz}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
