"""Streaming mode: latency of adding one frame as the video grows, vs re-running the offline pass.

    python bench/streaming.py [--config tiny|100m] [--max-frames 256] [--plot bench/streaming.png]
    python bench/streaming.py --small        # seconds-long smoke run

Both sides are ours (the official code has no online mode; its answer to a new frame is to
re-encode the whole video, which is the "naive" curve). Per new frame:

- stream: ``VideoStream.push`` = one CUT3R step + one frame of SigLIP, fusion and projector
  (``select="window"``: every frame takes the full visual branch, the worst case; ``uniform``
  skips it for frames it will not keep);
- naive:  the offline video branch (SigLIP, the CUT3R recurrence, fusion, projector) over all N
  frames seen so far.

Reported at N = 8, 16, ..., max: the median push latency over the frames around N, and the naive
time at N (compiled ahead of the timed call, so compilation is excluded). Prints the flatness of the stream
curve (largest deviation from its median over N) and the naive/stream ratio at the largest N, and saves the plot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))


def model_config(name: str):
    from configs import vlm3r_tiny

    m = vlm3r_tiny.model_config()
    if name == "100m":
        # ~100M parameters with the released structure: SigLIP 12x384 at 224 px, CUT3R enc 8x384 /
        # dec 6x256 at 224 px, Qwen2 8x768.
        m.llm.update(dict(hidden_size=768, num_layers=8, num_heads=12, num_kv_heads=4, intermediate_size=2048))
        m.vision.update(dict(image_size=224, patch_size=14, hidden_size=384, intermediate_size=1536,
                             num_hidden_layers=12, num_attention_heads=6))
        m.geometry.update(dict(enc_embed_dim=384, enc_depth=8, enc_num_heads=6, dec_embed_dim=256, dec_depth=6,
                               dec_num_heads=4, state_size=256, state_dec_num_heads=4, local_mem_size=64,
                               dpt_feature_dim=64, dpt_last_dim=32, dpt_layer_dims=(48, 96, 192, 256)))
        m.geometry_image_size = (224, 224)
        m.fusion.num_heads = 6
    elif name != "tiny":
        raise SystemExit(f"unknown --config {name!r}; choose tiny or 100m")
    return m


def build(name: str, tmp: str):
    from data_pipeline.tokenizer import QwenTokenizer
    from data_pipeline.tokenizer_build import build_tokenizer
    from vlm3r_jax.infer.vlm3r_model import VLM3RModel
    from vlm3r_jax.train.vlm3r_task import vlm3r_config

    tok = QwenTokenizer.from_dir(build_tokenizer(["How many chairs are in the room?"] * 50, tmp, vocab_size=300))
    return VLM3RModel.from_config(vlm3r_config(model_config(name), tok), tok)


def count_params(model) -> int:
    import jax

    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(model.params))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="tiny", help="tiny | 100m")
    ap.add_argument("--max-frames", type=int, default=256)
    ap.add_argument("--window", type=int, default=4, help="pushes timed around each N (median)")
    ap.add_argument("--plot", default=os.path.join(os.path.dirname(__file__), "streaming.png"))
    ap.add_argument("--json", default=None, help="also write the numbers here")
    ap.add_argument("--small", action="store_true", help="smoke run: tiny config, up to 32 frames, no plot")
    args = ap.parse_args()
    if args.small:
        args.config, args.max_frames, args.plot = "tiny", 32, None

    import tempfile

    import jax
    import jax.numpy as jnp
    from flax import nnx

    model = build(args.config, tempfile.mkdtemp())
    s = model.cfg.vision.image_size
    rng = np.random.default_rng(0)
    frames = rng.uniform(-1, 1, (args.max_frames, s, s, 3)).astype(np.float32)
    checkpoints = [n for n in (8, 16, 32, 64, 128, 256, 512) if n <= args.max_frames]

    graphdef = model.graphdef

    @jax.jit
    def offline(params, x):
        return nnx.merge(graphdef, params).pooled_frames(x)

    stream = model.stream(max_frames=8, select="window")
    push_s = []
    for i in range(args.max_frames):
        t0 = time.perf_counter()
        out = stream.push(frames[i])
        jax.block_until_ready((out, stream._carry, stream.buffer.entries[-1][1]))
        push_s.append(time.perf_counter() - t0)
    rows = []
    for n in checkpoints:
        lo = max(1, n - args.window)  # frame 0 pays the compilation
        ours = float(np.median(push_s[lo:n]))
        x = jnp.asarray(frames[None, :n])
        compiled = offline.lower(model.params, x).compile()  # compilation excluded, without a second run
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(model.params, x))
        naive = time.perf_counter() - t0
        rows.append({"frames": n, "stream_ms": 1e3 * ours, "naive_ms": 1e3 * naive, "ratio": naive / ours})
        print(f"N={n:4d}  stream {1e3 * ours:9.2f} ms/frame   naive {1e3 * naive:10.1f} ms/frame   "
              f"naive/stream {naive / ours:7.1f}x", flush=True)
    st = [r["stream_ms"] for r in rows]
    mid = float(np.median(st))
    flat = max(abs(x / mid - 1.0) for x in st)  # largest deviation from the curve's median
    res = {"config": args.config, "params": count_params(model), "backend": jax.default_backend(),
           "device": str(jax.devices()[0].device_kind), "rows": rows, "stream_max_deviation": flat,
           "ratio_at_max": rows[-1]["ratio"]}
    print(f"\n{args.config} ({res['params'] / 1e6:.1f}M params, {res['device']}): stream latency within "
          f"+-{100 * flat:.0f}% of its median {mid:.1f} ms over N={checkpoints[0]}..{checkpoints[-1]} (target +-20%); "
          f"naive/stream at N={checkpoints[-1]}: {rows[-1]['ratio']:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        n = [r["frames"] for r in rows]
        ax.loglog(n, st, "o-", label="stream: push one frame")
        ax.loglog(n, [r["naive_ms"] for r in rows], "s--", label="naive: offline pass over all N frames")
        ax.set_xlabel("frames seen so far (N)")
        ax.set_ylabel("latency of one new frame (ms)")
        ax.set_title(f"VLM-3R video branch, {args.config} config, {res['device']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print("saved", args.plot)


if __name__ == "__main__":
    main()
