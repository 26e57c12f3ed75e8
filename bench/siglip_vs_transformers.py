"""Frames/s of our SigLIP tower vs transformers' SiglipVisionModel, in one process.

Default: so400m-shaped random tower (27 layers, d=1152, 16 heads, mlp 4304, patch 14, 384x384),
batch of 8 frames, float32, both on CPU (transformers with sdpa attention, torch.no_grad).
``--small`` runs a tiny tower for a smoke test. On a GPU machine ours runs on the accelerator
(add ``--dtype bfloat16``); torch stays on CPU unless ``--torch-device cuda`` is given.

    python bench/siglip_vs_transformers.py            # the issue's measurement
    python bench/siglip_vs_transformers.py --small    # seconds; checks that everything runs
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from vlm3r_jax.convert import DictSource  # noqa: E402
from vlm3r_jax.convert.hf_siglip import load_siglip_state  # noqa: E402
from vlm3r_jax.models.siglip import SiglipVisionConfig, SiglipVisionModel  # noqa: E402

SO400M = dict(image_size=384, patch_size=14, hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
              num_attention_heads=16)
SMALL = dict(image_size=56, patch_size=14, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4)


def timeit(fn, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny tower (smoke test)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="our compute/param dtype")
    ap.add_argument("--attention", default="auto", choices=["xla", "cudnn", "cpu", "auto", "reference"])
    ap.add_argument("--torch-attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--torch-device", default="cpu")
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args()

    import torch
    from transformers import SiglipVisionConfig as HFConfig
    from transformers import SiglipVisionModel as HFModel

    shape = SMALL if args.small else SO400M
    torch.manual_seed(0)
    hf_cfg = HFConfig(**shape, vision_use_head=False, attn_implementation=args.torch_attn)
    hf = HFModel(hf_cfg).eval().to(args.torch_device)
    tensors = {k: v.detach().cpu().numpy() for k, v in hf.state_dict().items()}

    dt = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    cfg = SiglipVisionConfig(**shape, use_head=False, attention_impl=args.attention)
    abstract = nnx.eval_shape(lambda: SiglipVisionModel(cfg, dtype=dt, param_dtype=dt, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    state = load_siglip_state(state, DictSource(tensors), cfg, dtype=dt)

    @jax.jit
    def ours(state, x):
        return nnx.merge(graphdef, state).features(x)

    s = shape["image_size"]
    x = np.random.default_rng(0).uniform(-1, 1, (args.batch, s, s, 3)).astype(np.float32)
    xj = jnp.asarray(x, dt)
    out = ours(state, xj).block_until_ready()
    t_ours = timeit(lambda: ours(state, xj).block_until_ready(), args.iters, args.warmup)
    dev = jax.devices()[0]
    print(f"tower {shape} batch {args.batch}")
    print(f"ours  ({dev.platform}, {args.dtype}, attention={args.attention}): {t_ours * 1e3:8.1f} ms/batch "
          f"= {args.batch / t_ours:7.2f} frames/s")
    if args.skip_torch:
        return
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(args.torch_device)
    with torch.no_grad():
        ref = hf(pixel_values=xt).last_hidden_state.float().cpu().numpy()

        def run_torch():
            hf(pixel_values=xt)
            if args.torch_device.startswith("cuda"):
                torch.cuda.synchronize()

        t_ref = timeit(run_torch, args.iters, args.warmup)
    print(f"transformers ({args.torch_device}, float32, {args.torch_attn}, {torch.get_num_threads()} threads): "
          f"{t_ref * 1e3:8.1f} ms/batch = {args.batch / t_ref:7.2f} frames/s")
    err = np.abs(np.asarray(out, np.float32) - ref).max() / np.abs(ref).max()
    print(f"speed-up ours/transformers: {t_ref / t_ours:.2f}x   (max rel err of outputs {err:.2e})")


if __name__ == "__main__":
    main()
