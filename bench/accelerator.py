"""One accelerator benchmark (``bash bench/accelerator.sh``): on one H100 or one TPU host, in
under 8 minutes, appends to bench/RESULTS.md with the device name:

| section | what | against |
|---|---|---|
| train | whole VLM-3R 7B LoRA train step (configs/vlm3r_7b.py: bf16 compute, frozen bf16, fused attention by ``auto``, the config's remat), one row per local device, sharded over all of them | MFU by train/flops.py (6N trainable, 4N frozen with a gradient through, 2N forward-only, attention) over the dense bf16 peak |
| decode | Qwen2-7B bf16 greedy decode, batch 1, KV cache, in one ``fori_loop`` | the HBM-bandwidth bound: bandwidth / (weights + KV cache bytes per token) |
| vision | SigLIP so400m at 384^2, bf16 | frames/s |
| geometry | CUT3R 512 recurrence at 432^2, bf16 | frames/s |
| trace | ``jax.profiler`` trace of two train steps | ``--out``/trace (TensorBoard / Perfetto) |

``--smoke`` runs every section with tiny shapes on the CPU in well under a minute (a test calls it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from bench.qwen2_vs_transformers import timed as _timed  # noqa: E402  (median after one warm-up call)

# dense bf16 peak TFLOP/s and HBM TB/s per device, by device_kind prefix (vendor data sheets)
PEAK_TFLOPS = {"NVIDIA H100": 989.0, "NVIDIA H200": 989.0, "NVIDIA A100": 312.0, "NVIDIA L4": 121.0,
               "TPU v5p": 459.0, "TPU v6": 918.0, "TPU v5 lite": 197.0, "TPU v4": 275.0}
HBM_TBPS = {"NVIDIA H100": 3.35, "NVIDIA H200": 4.8, "NVIDIA A100": 2.0, "NVIDIA L4": 0.3,
            "TPU v5p": 2.76, "TPU v6": 1.64, "TPU v5 lite": 0.82, "TPU v4": 1.2}


def _lookup(table: dict[str, float], kind: str) -> float | None:
    return next((v for k, v in table.items() if kind.startswith(k)), None)


def _init(factory, smoke: bool):
    """(graphdef, state) of a randomly initialised module: drawn on the device, or with numpy
    for the CPU smoke run (XLA:CPU compiles a whole-model random init slowly)."""
    from vlm3r_jax.models.host_init import host_init

    if smoke:
        return nnx.split(host_init(factory))
    graphdef, _ = nnx.split(nnx.eval_shape(factory))
    return graphdef, jax.jit(lambda: nnx.split(factory())[1])()


def _run_config(smoke: bool):
    from configs import vlm3r_7b, vlm3r_tiny_aot

    cfg = vlm3r_tiny_aot.get_config() if smoke else vlm3r_7b.get_config()
    if smoke:  # one layer per tower keeps the CPU compile short
        cfg.model.llm.num_layers = cfg.model.vision.num_hidden_layers = 1
    cfg.train.grad_accum_steps = 1
    cfg.data.global_batch = jax.device_count()  # one row per local device, sharded over all of them
    return cfg


def _batch(p, rng: np.random.Generator) -> dict:
    """Random arrays for a prepared step's batch: one placeholder per row, the last few tokens labelled."""
    out = {}
    for k, s in p.batch.items():
        if k == "input_ids":
            ids = rng.integers(0, 1000, s.shape).astype(np.int32)
            ids[..., 5] = -200
            out[k] = ids
        elif k == "labels":
            lab = np.full(s.shape, -100, np.int32)
            n = min(8, max(int(p.cfg.train.get("max_label_tokens", 0)), 1))
            lab[..., -n:] = rng.integers(0, 1000, s.shape[:-1] + (n,))
            out[k] = lab
        elif k == "attention_mask":
            out[k] = np.ones(s.shape, np.int32)
        else:
            out[k] = rng.uniform(-1, 1, s.shape).astype(s.dtype)
    return {k: jax.device_put(v, p.batch_sh[k]) for k, v in out.items()}


def train_section(smoke: bool, steps: int, trace_dir: str) -> dict:
    from vlm3r_jax import sharding
    from vlm3r_jax.models.host_init import host_init
    from vlm3r_jax.train.aot import prepare_train_step
    from vlm3r_jax.train.state import TrainState
    from vlm3r_jax.train.trainable import split_trainable

    p = prepare_train_step(_run_config(smoke), jax.devices())
    tc = p.cfg.train

    def init(model=None):
        model = p.spec.factory() if model is None else model
        model.train()
        _, params, frozen = split_trainable(model, list(tc.trainable), include_lora=tc.get("train_lora", True))
        return TrainState.create(params, p.tx, seed=0), frozen

    with sharding.use_mesh(p.mesh, p.rules):
        t = time.perf_counter()
        if smoke:  # XLA:CPU takes minutes to compile a whole-model random init; numpy draws it at once
            state, frozen = jax.device_put(init(host_init(p.spec.factory)), (p.state_sh, p.frozen_sh))
        else:
            state, frozen = jax.jit(init, out_shardings=(p.state_sh, p.frozen_sh))()
        batch = _batch(p, np.random.default_rng(0))
        compiled = p.step.lower(state, frozen, batch).compile()
        compile_s = time.perf_counter() - t
        box = [state]

        def one():
            box[0], m = compiled(box[0], frozen, batch)
            float(m["loss"])

        step_s = _timed(one, steps)
        with jax.profiler.trace(trace_dir):
            one()
            one()
    flops = p.spec.step_flops(p.abstract)
    kind = jax.devices()[0].device_kind
    peak = _lookup(PEAK_TFLOPS, kind)
    out = {"global_batch": int(p.cfg.data.global_batch), "seq_len": p.spec.extras.get("seq_len"),
           "compile_s": round(compile_s, 1), "step_s": round(step_s, 4), "tflop_per_step": round(flops / 1e12, 4),
           "attention": p.spec.extras["attention"](), "remat": p.spec.extras.get("remat")}
    if peak:
        out["mfu"] = round(flops / jax.device_count() / step_s / (peak * 1e12), 4)
    return out


def decode_section(smoke: bool, new_tokens: int) -> dict:
    from vlm3r_jax.models.qwen2 import Qwen2, Qwen2Config

    if smoke:
        cfg = Qwen2Config(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                          intermediate_size=128, dtype="bfloat16", param_dtype="bfloat16")
    else:
        cfg = Qwen2Config(vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
                          intermediate_size=18944, rope_theta=1e6, max_position_embeddings=32768,
                          dtype="bfloat16", param_dtype="bfloat16")
    graphdef, state = _init(lambda: Qwen2(cfg, rngs=nnx.Rngs(0)), smoke)
    prompt = 16 if smoke else 128
    max_len = prompt + new_tokens

    @jax.jit
    def prefill(state, ids):
        model = nnx.merge(graphdef, state)
        logits, cache = model.last_logits(model.embed_tokens(ids), jnp.ones_like(ids), model.init_cache(1, max_len))
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache

    @jax.jit
    def decode(state, tok, cache):  # greedy, one token per iteration, all on the device
        model = nnx.merge(graphdef, state)

        def body(_, carry):
            tok, cache = carry
            logits, cache = model.last_logits(model.embed_tokens(tok[:, None]), jnp.ones((1, 1), jnp.int32), cache)
            return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache

        return jax.lax.fori_loop(0, new_tokens, body, (tok, cache))[0]

    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, prompt)), jnp.int32)
    tok, cache = prefill(state, ids)
    step_s = _timed(lambda: jax.block_until_ready(decode(state, tok, cache)), 2) / new_tokens
    weights = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))
    kv = 2 * cfg.num_layers * max_len * cfg.num_kv_heads * cfg.head_dim * 2  # bf16 K and V read per token
    kind = jax.devices()[0].device_kind
    bw = _lookup(HBM_TBPS, kind)
    out = {"tokens_per_s": round(1.0 / step_s, 1), "weights_gb": round(weights / 1e9, 3)}
    if bw:
        bound = bw * 1e12 / (weights + kv)
        out.update(bound_tokens_per_s=round(bound, 1), fraction_of_bound=round(1.0 / step_s / bound, 4))
    return out


def towers_section(smoke: bool, frames: int) -> dict:
    from configs import vlm3r_7b, vlm3r_tiny_aot
    from vlm3r_jax.models.cut3r.config import Cut3rConfig
    from vlm3r_jax.models.cut3r.model import Cut3r
    from vlm3r_jax.models.siglip import SiglipVisionConfig, SiglipVisionModel

    m = (vlm3r_tiny_aot if smoke else vlm3r_7b).get_config().model
    dt = "float32" if smoke else "bfloat16"
    vc = SiglipVisionConfig(**dict(m.vision))
    gc = Cut3rConfig(**{**dict(m.geometry), "dtype": dt, "param_dtype": dt})
    rng = np.random.default_rng(0)
    out = {}
    for name, build, shape, call in (
        ("siglip", lambda: SiglipVisionModel(vc, dtype=jnp.dtype(dt), param_dtype=jnp.dtype(dt), rngs=nnx.Rngs(0)),
         (frames, vc.image_size, vc.image_size, 3), lambda mdl, x: mdl.features(x)),
        ("cut3r", lambda: Cut3r(gc, rngs=nnx.Rngs(0)),
         (1, frames, *m.geometry_image_size, 3), lambda mdl, x: mdl.tokens(x)),
    ):
        graphdef, state = _init(build, smoke)
        fwd = jax.jit(lambda s, x, g=graphdef, c=call: c(nnx.merge(g, s), x))
        x = jnp.asarray(rng.uniform(-1, 1, shape), jnp.dtype(dt))
        sec = _timed(lambda f=fwd, s=state, x=x: jax.block_until_ready(f(s, x)), 2)
        out[f"{name}_frames_per_s"] = round(frames / sec, 2)
    return out


def append_results(path: str, res: dict) -> None:
    """One table row per run under the accelerator heading of ``path`` (created if missing)."""
    head = "## Accelerator benchmark (`bash bench/accelerator.sh`)"
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    if head not in text:
        text += (f"\n{head}\n\n| date (UTC) | device | mode | train MFU | step s | decode tok/s (of bound) | "
                 "SigLIP fr/s | CUT3R fr/s |\n|---|---|---|---|---|---|---|---|\n")
    t, d, v = res["train"], res["decode"], res["towers"]
    frac = f" ({100 * d['fraction_of_bound']:.0f}%)" if "fraction_of_bound" in d else ""
    mfu = f"{100 * t['mfu']:.1f}%" if "mfu" in t else "n/a (no peak for this device)"
    text += (f"| {res['date']} | {res['device']} x{res['devices']} | {res['mode']} | {mfu} | {t['step_s']} | "
             f"{d['tokens_per_s']}{frac} | {v['siglip_frames_per_s']} | {v['cut3r_frames_per_s']} |\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, well under a minute")
    ap.add_argument("--out", default="runs/bench_accelerator", help="trace + JSON go here")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"))
    ap.add_argument("--steps", type=int, default=0, help="timed train steps (default 2 smoke / 5)")
    args = ap.parse_args(argv)
    if not args.smoke and jax.default_backend() == "cpu":
        print("accelerator.py: no accelerator found (jax.default_backend() is cpu); run with --smoke on a CPU",
              file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    steps = args.steps or (2 if args.smoke else 5)
    res = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
           "device": jax.devices()[0].device_kind, "devices": jax.device_count(), "host": platform.node(),
           "mode": "smoke (tiny shapes)" if args.smoke else "7B"}
    res["train"] = train_section(args.smoke, steps, os.path.join(args.out, "trace"))
    res["decode"] = decode_section(args.smoke, 8 if args.smoke else 128)
    res["towers"] = towers_section(args.smoke, 2 if args.smoke else 32)
    print(json.dumps(res, indent=1))
    with open(os.path.join(args.out, "result.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
    append_results(args.results, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
