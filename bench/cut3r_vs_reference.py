"""CUT3R throughput, ours (JAX) vs the reference PyTorch code, in one process.

    python bench/cut3r_vs_reference.py --reference-src /path/to/CUT3R [--config mid|full] [--frames 32] [--size 432]
    python bench/cut3r_vs_reference.py --small          # seconds-long smoke run (tiny config, ours only)

The reference is imported from the user's clone (``<src>/src/dust3r/model.py``); nothing of it is
part of this repository. If its CUDA/C++ RoPE extension (``curope``) is not built, a small torch
stand-in with the same semantics is injected (the reference's own pure-torch fallback cannot handle
the pose token's negative position). Both sides use random weights of the same shapes, batch 1,
one recurrent sequence of F frames, float32, heads on (``--no-heads``: tokens only, as VLM-3R uses it).
Reported: frames/s after one warm-up call (ours excludes compilation, reported separately).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

CONFIGS = {
    # The released cut3r_512_dpt_4_64 shapes.
    "full": dict(enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12,
                 state_size=768, state_dec_num_heads=16, local_mem_size=256, ray_enc_depth=2),
    "mid": dict(enc_embed_dim=512, enc_depth=8, enc_num_heads=8, dec_embed_dim=384, dec_depth=6, dec_num_heads=6,
                state_size=256, state_dec_num_heads=8, local_mem_size=64, ray_enc_depth=1),
    "tiny": dict(enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=32, dec_depth=3, dec_num_heads=2,
                 state_size=16, state_dec_num_heads=4, local_mem_size=8, ray_enc_depth=1),
}  # fmt: skip
DPT_FULL = dict(dpt_feature_dim=256, dpt_last_dim=128, dpt_layer_dims=(96, 192, 384, 768))


def bench_ours(shape: dict, frames: np.ndarray, heads: bool, repeats: int, dtype: str) -> dict:
    import jax

    from vlm3r_jax.infer.cut3r_geometry import Cut3rGeometry
    from vlm3r_jax.models.cut3r import Cut3rConfig, init_cut3r

    cfg = Cut3rConfig(**shape, **DPT_FULL, dtype=dtype, param_dtype=dtype)
    geo = Cut3rGeometry(init_cut3r(cfg, 0))
    x = jax.numpy.asarray(frames[None])
    t0 = time.perf_counter()
    jax.block_until_ready(geo.stream_batch(x, with_heads=heads))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(geo.stream_batch(x, with_heads=heads))
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"side": "ours", "backend": jax.default_backend(), "first_call_s": compile_s, "best_s": best,
            "frames_per_s": frames.shape[0] / best}  # fmt: skip


def _torch_rope_standin():
    import torch

    class cuRoPE2D(torch.nn.Module):  # same semantics as the reference kernel (curope.cpp)
        def __init__(self, freq=100.0, F0=1.0):
            super().__init__()
            self.base, self.F0 = freq, F0

        def forward(self, tokens, positions):  # tokens [B, H, N, D], positions [B, N, 2]
            d = tokens.shape[-1] // 4
            if d == 0:  # e.g. the 16-head ray encoder of a tiny model: the kernel rotates nothing
                return tokens
            # like the kernel: load (half or float) into float32, rotate in float32, store in place
            t = tokens.float()
            inv = self.base ** (torch.arange(d, dtype=torch.float32, device=tokens.device) / d)
            out = []
            for axis in range(2):
                ang = (self.F0 * positions[:, None, :, axis, None].float()) / inv  # [B, 1, N, d]
                c, s = ang.cos(), ang.sin()
                u = t[..., axis * 2 * d : axis * 2 * d + d]
                v = t[..., axis * 2 * d + d : (axis + 1) * 2 * d]
                out += [u * c - v * s, v * c + u * s]
            tokens.copy_(torch.cat(out, dim=-1).to(tokens.dtype))
            return tokens

    return cuRoPE2D


def import_reference(src: str):
    """Imports ``ARCroco3DStereo``/``ARCroco3DStereoConfig`` and CroCo's ``dpt_block`` module from a clone
    of the reference repository (stubbing ``accelerate`` and ``curope`` when they are missing)."""

    sys.path.insert(0, os.path.join(src, "src"))
    import transformers  # noqa: F401  (imported before the accelerate stub below)

    stubbed = False
    try:
        import accelerate  # noqa: F401
    except ImportError:  # the reference only takes a logger from it; stub it during the import
        import logging

        acc = types.ModuleType("accelerate")
        acc.logging = types.ModuleType("accelerate.logging")
        acc.logging.get_logger = lambda name, log_level=None: logging.getLogger(name)
        sys.modules["accelerate"], sys.modules["accelerate.logging"] = acc, acc.logging
        stubbed = True
    import dust3r.utils.path_to_croco  # noqa: F401

    try:
        from models.curope import cuRoPE2D  # noqa: F401
    except ImportError:
        stub = types.ModuleType("models.curope")
        stub.cuRoPE2D = _torch_rope_standin()
        sys.modules["models.curope"] = stub
    import models.dpt_block as dpt_block
    from dust3r.model import ARCroco3DStereo, ARCroco3DStereoConfig

    if stubbed:  # transformers probes find_spec("accelerate") later; a stub without a spec breaks that
        del sys.modules["accelerate"], sys.modules["accelerate.logging"]

    return ARCroco3DStereo, ARCroco3DStereoConfig, dpt_block


def bench_reference(src: str, shape: dict, frames: np.ndarray, heads: bool, repeats: int) -> dict:
    import torch

    ARCroco3DStereo, ARCroco3DStereoConfig, _ = import_reference(src)
    inf = float("inf")
    kw = dict(output_mode="pts3d+pose", head_type="dpt", depth_mode=("exp", -inf, inf), conf_mode=("exp", 1, inf),
              pose_mode=("exp", -inf, inf), landscape_only=False, patch_embed_cls="PatchEmbedDust3R", state_pe="2d",
              rgb_head=True, pose_head=True, img_size=(512, 512), patch_size=16, pos_embed="RoPE100", **shape)  # fmt: skip
    torch.manual_seed(0)
    model = ARCroco3DStereo(ARCroco3DStereoConfig(**kw)).eval()
    f, h, w, _ = frames.shape
    img = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    views = [
        dict(
            img=img[i : i + 1],
            ray_map=torch.full((1, 6, h, w), torch.nan),
            true_shape=torch.tensor([[h, w]]),
            img_mask=torch.tensor([True]),
            ray_mask=torch.tensor([False]),
            update=torch.tensor([True]),
            reset=torch.tensor([False]),
            camera_pose=torch.eye(4)[None],
        )  # fmt: skip
        for i in range(f)
    ]
    if not heads:  # VLM-3R discards the DPT output; skip it on the reference side too
        model._downstream_head = lambda decout, img_shape, **kw: {}
    times = []
    with torch.no_grad():
        model(views)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(views)
            times.append(time.perf_counter() - t0)
    best = min(times)
    return {"side": "reference", "backend": "torch-cpu", "threads": torch.get_num_threads(), "best_s": best,
            "frames_per_s": f / best}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-src", default=None, help="clone of github.com/CUT3R/CUT3R (omit: ours only)")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="mid")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--size", type=int, default=432)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-heads", action="store_true", help="tokens only (what VLM-3R consumes)")
    ap.add_argument("--small", action="store_true", help="smoke run: tiny config, 4 frames of 64x64, ours only")
    a = ap.parse_args()
    if a.small:
        a.config, a.frames, a.size, a.repeats = "tiny", 4, 64, 1
    shape = CONFIGS[a.config]
    frames = np.random.default_rng(0).uniform(-1, 1, (a.frames, a.size, a.size, 3)).astype(np.float32)
    heads = not a.no_heads
    rows = [bench_ours(shape, frames, heads, a.repeats, a.dtype)]
    if a.reference_src:
        rows.append(bench_reference(a.reference_src, shape, frames, heads, a.repeats))
    meta = {"config": a.config, "frames": a.frames, "size": a.size, "heads": heads, "dtype": a.dtype}
    for r in rows:
        print(json.dumps({**meta, **r}))
    if len(rows) == 2:
        print(f"| CUT3R {a.config} {a.frames}x{a.size}^2 heads={heads} | ours {rows[0]['frames_per_s']:.2f} f/s "
              f"({rows[0]['backend']}) | reference {rows[1]['frames_per_s']:.2f} f/s | "
              f"speed-up {rows[0]['frames_per_s'] / rows[1]['frames_per_s']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
