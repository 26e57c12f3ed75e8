"""Train-step benchmark: MFU against this machine's measured matmul peak, and the data-wait share
of step time when batches come from the Grain pipeline.

    python bench/train_step.py                # ~100M-param VLM-3R-shaped model on CPU (minutes)
    python bench/train_step.py --tiny         # smoke run, < 1 min
    python bench/train_step.py --gpu7b        # accelerator: 7B-shaped LoRA step in bf16 (synthetic batch)

CPU run: the peak is the best FLOP/s of a large float32 ``jnp.dot`` timed in the same process.
A procedural-scene dataset (data_pipeline.make_dataset) feeds the real Grain pipeline; every step
is split into data wait (``next(iterator)`` + host->device) and compute (the jitted step until its
result is ready). FLOPs per step come from XLA's cost analysis of the compiled step (the whole
model: SigLIP, CUT3R forward, fusion, projector, LLM forward + backward); the usual 6*N*tokens LLM
estimate is printed next to it.

--gpu7b: the released shapes (configs/vlm3r_7b.py: Qwen2-7B + SigLIP so400m + fusion + projector,
CUT3R tokens from the offline cache) in bf16 with the paper's trainable set (LoRA r=128 + fusion +
projector), one synthetic row per local device sharded over all of them, against the card's dense
bf16 peak (bench/accelerator.py's table); the same step ``bash bench/accelerator.sh`` times.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

# ~100M parameters, VLM-3R-shaped (configs/vlm3r_tiny.py structure, wider): LLM 8 x 768 with a
# 32000-token vocabulary (~98M), SigLIP 4 x 384 at 128 px, CUT3R 256/128, 4 frames.
MODEL_100M = dict(
    llm=dict(hidden_size=768, num_layers=8, num_heads=12, num_kv_heads=4, intermediate_size=2048),
    vision=dict(image_size=128, patch_size=16, hidden_size=384, intermediate_size=1536, num_hidden_layers=4,
                num_attention_heads=6),
    geometry=dict(patch_size=16, enc_embed_dim=256, enc_depth=4, enc_num_heads=4, dec_embed_dim=128, dec_depth=2,
                  dec_num_heads=4, state_size=64, state_dec_num_heads=4, local_mem_size=16),
    geometry_image_size=(128, 128), fusion_heads=6, vocab=32000, frames=4, batch=4,
)
MODEL_TINY = dict(
    llm=dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128),
    vision=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4),
    geometry=dict(patch_size=16, enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=32, dec_depth=1,
                  dec_num_heads=2, state_size=8, state_dec_num_heads=2, local_mem_size=4),
    geometry_image_size=(32, 32), fusion_heads=4, vocab=0, frames=2, batch=4,
)


def matmul_peak(n: int, dtype=jnp.float32, repeats: int = 5) -> float:
    """Best FLOP/s of an [n, n] x [n, n] ``jnp.dot`` (2 n^3 FLOPs) on the default device."""
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (n, n), dtype)
    b = jax.random.normal(k2, (n, n), dtype)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def step_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled function, from XLA's cost analysis (None if unavailable)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def run_config(shape: dict, data_root: str, tok_dir: str, batch: int, frames: int, workers: int):
    """configs/demo_tiny.py with the benchmark's model shapes."""
    from configs import demo_tiny

    cfg = demo_tiny.get_config()
    m = cfg.model
    m.llm.update(shape["llm"])
    m.vision.update(shape["vision"])
    m.geometry.update(shape["geometry"])
    m.geometry_image_size = shape["geometry_image_size"]
    m.fusion.num_heads = shape["fusion_heads"]
    cfg.data.root = data_root
    cfg.data.tokenizer_dir = tok_dir
    cfg.data.num_frames = frames
    cfg.data.siglip_size = shape["vision"]["image_size"]
    cfg.data.worker_count = workers
    cfg.data.label_policy = "answers_only"
    cfg.data.length_buckets = (256,)  # one static shape: one compile, every step timed alike
    cfg.train.batch_size = batch
    return cfg


def make_data(root: str, scenes: int) -> tuple[str, str]:
    from configs import data_synthetic
    from data_pipeline.make_dataset import make_dataset
    from launch.demo import make_tokenizer

    data = os.path.join(root, "data")
    if not os.path.exists(os.path.join(data, "stats.json")):
        c = data_synthetic.get_config("demo")
        c.num_scenes, c.num_workers, c.eval_fraction = scenes, 1, 0.25
        make_dataset(c, data, progress=False)
    return data, make_tokenizer(data, os.path.join(root, "tokenizer"))


def cpu_benchmark(args) -> dict:
    from vlm3r_jax.models.host_init import host_init
    from vlm3r_jax.models.vlm3r import VLM3R
    from vlm3r_jax.train import vlm3r_task
    from vlm3r_jax.train.loop import _to_micro
    from vlm3r_jax.train.optimizer import make_optimizer
    from vlm3r_jax.train.state import TrainState
    from vlm3r_jax.train.step import make_train_step
    from vlm3r_jax.train.trainable import split_trainable
    from vlm3r_jax.train.vlm3r_task import vlm3r_loss

    shape = MODEL_TINY if args.tiny else MODEL_100M
    peak = matmul_peak(512 if args.tiny else args.matmul_size)
    print(f"matmul peak ({jax.devices()[0].device_kind}, f32): {peak / 1e9:.1f} GFLOP/s")

    root = args.workdir or tempfile.mkdtemp(prefix="bench_train_step_")
    data, tok_dir = make_data(root, 4 if args.tiny else 8)
    batch, frames = args.batch or shape["batch"], args.frames or shape["frames"]
    cfg = run_config(shape, data, tok_dir, batch, frames, args.workers)
    from data_pipeline.tokenizer import QwenTokenizer

    tok = QwenTokenizer.from_dir(tok_dir)
    vcfg = vlm3r_task.vlm3r_config(cfg.model, tok)
    if shape["vocab"]:  # a realistic vocabulary (only the tokenizer's ids occur; the head is full size)
        vcfg = vcfg.replace(llm=dataclasses.replace(vcfg.llm, vocab_size=shape["vocab"]))
    graphdef, state = nnx.split(host_init(lambda: VLM3R(vcfg, rngs=nnx.Rngs(params=0, dropout=1))))
    model = nnx.merge(graphdef, state)
    model.train()
    graphdef, params, frozen = split_trainable(model, list(cfg.train.trainable))
    n_total = sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
    n_train = sum(x.size for x in jax.tree_util.tree_leaves(params))
    tx, _ = make_optimizer(cfg.optim, args.steps + 1)
    tstate = TrainState.create(params, tx)
    it = vlm3r_task.train_iterator(cfg, vcfg, tok)
    try:
        host = next(it)
        first = {k: jnp.asarray(v) for k, v in _to_micro(host, 1).items()}
        t = time.perf_counter()
        compiled = jax.jit(make_train_step(graphdef, tx, vlm3r_loss), donate_argnums=0).lower(
            tstate, frozen, first).compile()
        compile_s = time.perf_counter() - t
        flops = step_flops(compiled)
        tstate, m = compiled(tstate, frozen, first)
        float(m["loss"])
        rows = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            host = next(it)
            b = {k: jnp.asarray(v) for k, v in _to_micro(host, 1).items()}
            jax.block_until_ready(b)
            t1 = time.perf_counter()
            if any(b[k].shape != first[k].shape for k in first):
                raise RuntimeError(f"batch shapes changed: { {k: b[k].shape for k in first} }")
            tstate, m = compiled(tstate, frozen, b)
            loss = float(m["loss"])
            t2 = time.perf_counter()
            rows.append((t1 - t0, t2 - t1, loss))
    finally:
        it.close()
    wait = np.array([r[0] for r in rows])
    comp = np.array([r[1] for r in rows])
    step_s = float(np.mean(wait + comp))
    seq = int(np.prod(first["attention_mask"].shape))
    spliced = seq - batch + batch * vcfg.num_video_tokens(frames)
    c = vcfg.llm
    llm_params = c.num_layers * (2 * c.hidden_size * c.num_heads * c.head_dim + 2 * c.hidden_size * c.num_kv_heads
                                 * c.head_dim + 3 * c.hidden_size * c.intermediate_size) + c.hidden_size * c.vocab_size
    flops_6n = 6.0 * llm_params * spliced
    out = {
        "device": jax.devices()[0].device_kind, "preset": "tiny" if args.tiny else "100m",
        "params_total": int(n_total), "params_trainable": int(n_train), "batch": batch, "frames": frames,
        "tokens_per_step": int(spliced), "compile_s": round(compile_s, 1), "steps_timed": len(rows),
        "step_s": round(step_s, 4), "compute_s": round(float(comp.mean()), 4), "data_wait_s": round(float(wait.mean()), 4),
        "data_wait_share": round(float(wait.sum() / (wait.sum() + comp.sum())), 4),
        "matmul_peak_gflops": round(peak / 1e9, 2),
        "step_gflop_xla": None if flops is None else round(flops / 1e9, 2),
        "mfu_xla": None if flops is None else round(flops / float(comp.mean()) / peak, 4),
        "step_gflop_6n_llm": round(flops_6n / 1e9, 2), "mfu_6n_llm": round(flops_6n / float(comp.mean()) / peak, 4),
        "final_loss": round(rows[-1][2], 4),
    }
    return out


def gpu7b_benchmark(args) -> dict:
    """The released shapes (configs/vlm3r_7b.py) in bf16 with the paper's trainable set, one
    synthetic row per local device sharded over all of them: the train section of
    bench/accelerator.py (``--tiny``: its CPU smoke shapes). MFU by vlm3r_jax/train/flops.py."""
    from bench import accelerator

    res = accelerator.train_section(args.tiny, args.steps, os.path.join(args.workdir or tempfile.mkdtemp(), "trace"))
    return {"device": jax.devices()[0].device_kind, "devices": jax.device_count(),
            "preset": "7b-tiny-shapes" if args.tiny else "7b", **res}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, a few steps: a < 1 min smoke run")
    ap.add_argument("--gpu7b", action="store_true", help="7B-shaped LoRA step in bf16 on an accelerator")
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default 3 tiny / 5 CPU / 10 GPU)")
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--frames", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="Grain worker processes (CPU run)")
    ap.add_argument("--matmul-size", type=int, default=2048)
    ap.add_argument("--workdir", default="", help="dataset/tokenizer cache (default: a temp dir)")
    ap.add_argument("--json", default="", help="also write the result here")
    args = ap.parse_args(argv)
    args.steps = args.steps or (3 if args.tiny else 10 if args.gpu7b else 5)
    if args.tiny and not args.gpu7b:
        args.workers = min(args.workers, 0)  # no worker start-up cost in the smoke run
    res = gpu7b_benchmark(args) if args.gpu7b else cpu_benchmark(args)
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
