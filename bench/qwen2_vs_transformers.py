"""Qwen2 inference speed: vlm3r_jax vs transformers (torch), one process, same random weights.

Measures, for a Qwen2-0.5B-shaped random model (24 layers, d=896, 14 heads, 2 kv heads, MLP
4864, vocab 151936, tied head):
  (a) prefill tokens/s at T=512, batch 1 (ours: fill the KV cache + last-token logits;
      transformers: forward with use_cache=True, logits_to_keep=1);
  (b) greedy decode tokens/s, batch 1, 128 new tokens (ours: the jitted while_loop sampler;
      transformers: generate(use_cache=True)); decode time = t(128 tokens) - t(1 token), so the
      prefill is excluded on both sides;
  (c) decode as a fraction of the memory-bandwidth bound: each decoded token must read every
      parameter once, so bound = param bytes / measured copy bandwidth (read bandwidth from a
      large array copy) per token.
Targets (issue 2): prefill >= 1.5x, decode >= 3x transformers, decode >= 60% of the bound.

  python bench/qwen2_vs_transformers.py                 # full size, float32, writes bench/RESULTS.md
  python bench/qwen2_vs_transformers.py --small         # tiny smoke run (prints only)
  python bench/qwen2_vs_transformers.py --dtype bfloat16 --no-torch   # e.g. on a GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
MARK_BEGIN = "<!-- qwen2_vs_transformers:begin -->"
MARK_END = "<!-- qwen2_vs_transformers:end -->"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--heads", type=int, default=14)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--mlp", type=int, default=4864)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--prefill-len", type=int, default=512)
    p.add_argument("--prompt-len", type=int, default=32, help="prompt length for the decode measurement")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32", help="ours: float32 | bfloat16 (transformers runs float32 on CPU)")
    p.add_argument("--no-torch", action="store_true", help="skip transformers (e.g. on an accelerator)")
    p.add_argument("--small", action="store_true", help="tiny shapes, a smoke test of this script")
    p.add_argument("--write", default=None, help="results file to update (default: bench/RESULTS.md unless --small)")
    a = p.parse_args()
    if a.small:
        a.layers, a.hidden, a.heads, a.kv_heads, a.mlp, a.vocab = 2, 64, 4, 2, 128, 512
        a.prefill_len, a.prompt_len, a.new_tokens, a.repeats = 64, 8, 16, 2
    return a


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up (compilation) run."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Host read bandwidth in bytes/s from a large memcpy (copy moves 2x the bytes: read + write)."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    t = timed(lambda: np.copyto(dst, src), 3)
    return 2 * src.nbytes / t


def device_bandwidth(nbytes: int = 1 << 30) -> float:
    """Accelerator memory bandwidth (bytes/s) from a jitted copy of a large array."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((nbytes // 4,), jnp.float32)
    f = jax.jit(lambda a: a + 1.0)
    t = timed(lambda: f(x).block_until_ready(), 5)
    return 2 * x.nbytes / t


def main() -> None:
    a = parse()
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vlm3r_jax.convert import DictSource
    from vlm3r_jax.convert.hf_qwen2 import abstract_state, load_qwen2_state
    from vlm3r_jax.infer.qwen2_lm import Qwen2LM
    from vlm3r_jax.models.qwen2 import Qwen2Config

    backend = jax.default_backend()
    cfg = Qwen2Config(
        vocab_size=a.vocab, hidden_size=a.hidden, num_layers=a.layers, num_heads=a.heads, num_kv_heads=a.kv_heads,
        intermediate_size=a.mlp, rope_theta=1_000_000.0, tie_word_embeddings=True, param_dtype=a.dtype, dtype=a.dtype,
    )
    hf = None
    if not a.no_torch:
        import torch
        import transformers

        torch.set_num_threads(os.cpu_count() or 1)
        torch.manual_seed(0)
        fields = {k: v for k, v in cfg.to_hf_config().items() if k not in ("architectures", "model_type", "torch_dtype")}
        hf_cfg = transformers.Qwen2Config(**fields, attn_implementation="sdpa")
        hf = transformers.Qwen2ForCausalLM(hf_cfg).eval()
        sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
        graphdef, abstract = abstract_state(cfg)
        state = load_qwen2_state(DictSource(sd), cfg, state=abstract)
        del sd
        lm = Qwen2LM(cfg, graphdef, state)
    else:
        lm = Qwen2LM.random(cfg, seed=0)

    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(lm.state))
    param_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(lm.state))
    rng = np.random.default_rng(0)
    rows: list[tuple[str, str, str, str]] = []

    # (a) prefill
    t_pre = a.prefill_len
    ids = rng.integers(0, a.vocab, (1, t_pre)).astype(np.int32)

    @jax.jit
    def prefill(state, ids):
        model = nnx.merge(lm.graphdef, state)
        emb = model.embed_tokens(ids)
        logits, cache = model.last_logits(emb, jnp.ones(ids.shape, jnp.int32), model.init_cache(1, ids.shape[1]))
        return logits, cache.k[-1]

    ids_j = jnp.asarray(ids)
    t_ours = timed(lambda: jax.block_until_ready(prefill(lm.state, ids_j)), a.repeats)
    ours_pre = t_pre / t_ours
    hf_pre = None
    if hf is not None:
        import torch

        ids_t = torch.tensor(ids, dtype=torch.long)

        def hf_prefill():
            with torch.no_grad():
                hf(ids_t, use_cache=True, logits_to_keep=1)

        hf_pre = t_pre / timed(hf_prefill, a.repeats)
    rows.append(
        (f"prefill tok/s (T={t_pre}, B=1)", f"{ours_pre:,.0f}", "-" if hf_pre is None else f"{hf_pre:,.0f}",
         "-" if hf_pre is None else f"{ours_pre / hf_pre:.2f}x")
    )

    # (b) greedy decode
    prompt = rng.integers(0, a.vocab, (1, a.prompt_len)).astype(np.int32)
    n = a.new_tokens

    def ours_gen(k):
        return lambda: lm.generate(prompt, max_new_tokens=k, eos_token_id=[])

    t_n, t_1 = timed(ours_gen(n), a.repeats), timed(ours_gen(1), a.repeats)
    ours_dec = (n - 1) / max(t_n - t_1, 1e-9)
    hf_dec = None
    same_tokens = None
    if hf is not None:
        import torch

        pt = torch.tensor(prompt, dtype=torch.long)

        def hf_gen(k):
            def run():
                with torch.no_grad():
                    return hf.generate(
                        pt, max_new_tokens=k, min_new_tokens=k, do_sample=False, use_cache=True, pad_token_id=0,
                        eos_token_id=None,
                    )

            return run

        h_n, h_1 = timed(hf_gen(n), a.repeats), timed(hf_gen(1), a.repeats)
        hf_dec = (n - 1) / max(h_n - h_1, 1e-9)
        if a.dtype == "float32":
            same_tokens = bool(np.array_equal(hf_gen(n)().numpy(), ours_gen(n)()))
    rows.append(
        (f"greedy decode tok/s (B=1, {n} new)", f"{ours_dec:,.1f}", "-" if hf_dec is None else f"{hf_dec:,.1f}",
         "-" if hf_dec is None else f"{ours_dec / hf_dec:.2f}x")
    )

    # (c) bandwidth bound
    size = (1 << 26) if a.small else (1 << 30)
    bw = copy_bandwidth(size) if backend == "cpu" else device_bandwidth(size)
    bound_tok_s = bw / param_bytes
    frac = ours_dec / bound_tok_s
    rows.append(("decode / bandwidth bound", f"{100 * frac:.0f}%", "-" if hf_dec is None else f"{100 * hf_dec / bound_tok_s:.0f}%", ""))

    dev = jax.devices()[0]
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores" if backend == "cpu" else f"{dev.device_kind}"
    header = (
        f"Qwen2 {'(small smoke shapes) ' if a.small else ''}layers={a.layers} d={a.hidden} heads={a.heads}/{a.kv_heads} "
        f"mlp={a.mlp} vocab={a.vocab}, {n_params / 1e6:.0f}M params, {param_bytes / 2**30:.2f} GiB, ours {a.dtype} on "
        f"{backend} ({machine}), transformers float32 CPU sdpa; copy bandwidth {bw / 1e9:.1f} GB/s -> bound "
        f"{bound_tok_s:.1f} tok/s" + ("" if same_tokens is None else f"; greedy tokens identical: {same_tokens}")
    )
    table = ["| metric | vlm3r_jax | transformers | ratio |", "|---|---|---|---|"]
    table += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |" for r in rows]
    text = header + "\n\n" + "\n".join(table)
    print(text)

    out = a.write if a.write is not None else (None if a.small else RESULTS)
    if out:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        section = f"{MARK_BEGIN}\n## qwen2_vs_transformers ({stamp})\n\n{text}\n{MARK_END}"
        old = open(out, encoding="utf-8").read() if os.path.exists(out) else "# Benchmark results\n"
        pattern = re.compile(re.escape(MARK_BEGIN) + ".*?" + re.escape(MARK_END), re.S)
        new = pattern.sub(lambda _: section, old) if pattern.search(old) else old.rstrip() + "\n\n" + section + "\n"
        with open(out, "w", encoding="utf-8") as f:
            f.write(new)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
