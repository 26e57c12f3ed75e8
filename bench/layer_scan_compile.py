"""Compile time of a 28-layer tiny Qwen2 train gradient: scanned layer stack vs the same layers
unrolled (what the Python loop over layers compiled to before the stacks).

    python -m bench.layer_scan_compile [--layers 28]
"""

from __future__ import annotations

import argparse
import functools
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=28)
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vlm3r_jax.layers import scan as scan_mod
    from vlm3r_jax.models.qwen2 import Qwen2, Qwen2Config

    cfg = Qwen2Config(vocab_size=256, hidden_size=64, num_layers=args.layers, num_heads=4, num_kv_heads=2,
                      intermediate_size=128, attention_impl="xla")
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Qwen2(cfg, rngs=nnx.Rngs(0))))
    ids = jax.ShapeDtypeStruct((2, 64), jnp.int32)

    def loss(p, x):
        return nnx.merge(graphdef, p)(x)[0].astype(jnp.float32).mean()

    def compile_s() -> float:
        t0 = time.perf_counter()
        jax.jit(jax.grad(loss)).lower(params, ids).compile()
        return time.perf_counter() - t0

    scanned = compile_s()
    real_scan = jax.lax.scan
    scan_mod.jax.lax.scan = functools.partial(real_scan, unroll=True)  # every layer inlined, as a loop
    try:
        unrolled = compile_s()
    finally:
        scan_mod.jax.lax.scan = real_scan
    print(f"{args.layers} layers on {jax.devices()[0].platform}: scanned {scanned:.1f} s, "
          f"unrolled {unrolled:.1f} s ({unrolled / scanned:.1f}x)")


if __name__ == "__main__":
    main()
