"""VLM-3R forward + generation time per stage: ours (JAX) vs the official PyTorch code, one command.

    python bench/vlm3r_forward.py                                   # ~100M-param config, 8 frames, ours only
    python bench/vlm3r_forward.py --reference-src /path/to/VLM-3R [--reference-site DIR] [--reference-python PY]
    python bench/vlm3r_forward.py --tiny [--reference-src ...]      # smoke run, well under a minute

Stages (batch 1, CPU float32, random weights of the same shapes on both sides): SigLIP (last layer
dropped), CUT3R (432x432 recurrence over the F frames), fusion (cross_attention), projector +
2x2 pool + newline + splice, LLM prefill of the spliced prompt, decode of N new tokens (no early
stop), and end to end (``generate`` from ids + frames). The official CUT3R stage also runs the DPT
and pose heads at their hard-coded full size and throws the result away (VLM-3R uses the decoder
tokens only); ours never computes them. ``--reference-no-heads`` (implied by ``--tiny``) removes
that work from the reference side for a like-for-like CUT3R comparison. Each stage is timed on its own inputs,
best of ``--repeats`` calls after one warm-up (ours: compile time reported separately).
``decode`` = generate(prompt embeddings, N tokens) - prefill, on both sides.

The reference side runs in a subprocess (``bench/_vlm3r_reference_side.py``) with
``--reference-python`` (default: this interpreter) and ``--reference-site`` directories put first
on its ``sys.path``. The official code needs transformers 4.40 (the repository pins 4.40.0.dev0);
with this project's transformers 5.x, install the old stack into a separate directory, e.g.
``pip install --no-deps --target /tmp/vlm3r_ref_site transformers==4.40.0 tokenizers==0.19.1
huggingface_hub==0.23.4`` and pass ``--reference-site /tmp/vlm3r_ref_site`` (torch comes from
the interpreter). CUT3R is looked up in ``<src>/CUT3R`` (the submodule) or ``--reference-cut3r``.
The reference's CUDA RoPE is replaced by a torch stand-in of the same math when ``curope`` is not
built, and its SigLIP / CUT3R weights are random instead of downloaded. Nothing of the reference
is part of this repository.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

STAGES = ("siglip", "cut3r", "fusion", "projector_splice", "llm_prefill", "decode", "end_to_end")


def spec(tiny: bool, frames: int | None, new_tokens: int | None) -> dict:
    """Shapes shared by both sides. The reference hard-codes SigLIP 384/14 (27x27 = 729 tokens),
    CUT3R input 432 and 18 fusion heads, so every config keeps them."""
    if tiny:
        s = dict(
            siglip=dict(hidden_size=36, intermediate_size=72, num_hidden_layers=3, num_attention_heads=4),
            cut3r=dict(enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=32, dec_depth=2, dec_num_heads=2,
                       state_size=16, state_dec_num_heads=2, local_mem_size=8, ray_enc_depth=1),
            llm=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512),
            frames=2, new_tokens=4, prompt_len=24)
    else:  # ~100M parameters (see the PARAMS line of the output for the split)
        s = dict(
            siglip=dict(hidden_size=288, intermediate_size=1152, num_hidden_layers=6, num_attention_heads=4),
            cut3r=dict(enc_embed_dim=384, enc_depth=6, enc_num_heads=6, dec_embed_dim=256, dec_depth=4,
                       dec_num_heads=4, state_size=256, state_dec_num_heads=4, local_mem_size=64, ray_enc_depth=1),
            llm=dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=12, num_attention_heads=8,
                     num_key_value_heads=2, vocab_size=24000),
            frames=8, new_tokens=16, prompt_len=64)
    s["siglip"].update(image_size=384, patch_size=14)
    s["fusion_heads"] = 18
    s["geometry_size"] = 432
    if frames:
        s["frames"] = frames
    if new_tokens:
        s["new_tokens"] = new_tokens
    return s


def inputs(s: dict) -> tuple[np.ndarray, np.ndarray]:
    """Prompt ids int64 [1, T] with one placeholder (-200) in the middle; frames float32 [F, 384, 384, 3] in [-1, 1]."""
    rng = np.random.default_rng(0)
    ids = rng.integers(10, s["llm"]["vocab_size"] - 10, size=(1, s["prompt_len"])).astype(np.int64)
    ids[0, s["prompt_len"] // 2] = -200
    frames = rng.uniform(-1, 1, size=(s["frames"], 384, 384, 3)).astype(np.float32)
    return ids, frames


def _best(fn, repeats: int) -> tuple[float, float, object]:
    import jax

    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return first, best, out


def build_ours(s: dict):
    import jax.numpy as jnp
    from flax import nnx

    from vlm3r_jax.convert.assign import flat_variables
    from vlm3r_jax.models.cut3r.config import tiny_config
    from vlm3r_jax.models.fusion import FusionConfig
    from vlm3r_jax.models.projector import ProjectorConfig
    from vlm3r_jax.models.qwen2 import Qwen2Config
    from vlm3r_jax.models.siglip import SiglipVisionConfig
    from vlm3r_jax.models.vlm3r import VLM3R, VLM3RConfig

    sl, lm, c3 = s["siglip"], s["llm"], s["cut3r"]
    vc = SiglipVisionConfig(image_size=384, patch_size=14, hidden_size=sl["hidden_size"],
                            intermediate_size=sl["intermediate_size"], num_hidden_layers=sl["num_hidden_layers"],
                            num_layers_used=sl["num_hidden_layers"] - 1, num_attention_heads=sl["num_attention_heads"],
                            use_post_layernorm=False, use_head=False)
    lc = Qwen2Config(vocab_size=lm["vocab_size"], hidden_size=lm["hidden_size"], num_layers=lm["num_hidden_layers"],
                     num_heads=lm["num_attention_heads"], num_kv_heads=lm["num_key_value_heads"],
                     intermediate_size=lm["intermediate_size"], tie_word_embeddings=False, eos_token_ids=(),
                     rope_theta=1e6, rms_norm_eps=1e-6)
    gc = tiny_config(**c3)
    pc = ProjectorConfig(mm_hidden_size=vc.hidden_size, hidden_size=lc.hidden_size, num_patches_per_side=27,
                         patch_merge_type="spatial_unpad", newline_position="grid")
    cfg = VLM3RConfig(llm=lc, vision=vc, projector=pc, geometry=gc, geometry_image_size=(432, 432),
                      fusion=FusionConfig(d_clip=vc.hidden_size, d_spatial=gc.dec_embed_dim, num_heads=s["fusion_heads"]))
    # abstract construction + host random values: jax's initializers compile one program per shape
    model = nnx.eval_shape(lambda: VLM3R(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    n: dict[str, int] = {}
    for path, var in flat_variables(nnx.state(model, nnx.Param)).items():
        v = var.get_value()
        top = path.split(".")[0]
        n[top] = n.get(top, 0) + int(np.prod(v.shape))
        val = (1.0 if path.endswith("scale") else 0.0) + 0.02 * rng.standard_normal(v.shape)
        var.set_value(jnp.asarray(val, v.dtype))
    return model, n


def bench_ours(s: dict, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    from einops import rearrange
    from flax import nnx

    from vlm3r_jax.infer.sampling import SamplingConfig, generate, stop_ids_array
    from vlm3r_jax.infer.vlm3r_model import VLM3RModel
    from vlm3r_jax.models.projector import layout_video_tokens
    from vlm3r_jax.models.splice import splice_video

    t0 = time.perf_counter()
    model, n_params = build_ours(s)
    build_s = time.perf_counter() - t0
    g, p = nnx.split(model)
    ids_np, frames_np = inputs(s)
    ids = jnp.asarray(ids_np, jnp.int32)
    frames = jnp.asarray(frames_np)[None]
    nt = s["new_tokens"]
    pc = model.cfg.projector

    def m(params):
        return nnx.merge(g, params)

    f_sig = jax.jit(lambda q, fr: m(q).visual_features(fr))
    f_geo = jax.jit(lambda q, fr: m(q).geometry_tokens(fr))
    f_fuse = jax.jit(lambda q, x, geo: m(q).fuse(x, geo))

    def splice(q, x, ids):
        mm = m(q)
        pooled = mm.mm_projector.pool(mm.mm_projector.project(x))
        pooled = rearrange(pooled, "(b f) h w d -> b f h w d", b=1)
        video = jax.vmap(lambda t: layout_video_tokens(t, mm.mm_projector.image_newline[...],
                                                       newline_position=pc.newline_position,
                                                       patch_merge_type=pc.patch_merge_type))(pooled)
        is_ph = ids == model.cfg.video_token_id
        text = mm.llm.embed_tokens(jnp.where(is_ph, 0, ids))
        return splice_video(text, video, jnp.argmax(is_ph, axis=1))["inputs_embeds"]

    f_splice = jax.jit(splice)

    def prefill(q, emb):
        llm = m(q).llm
        cache = llm.init_cache(1, emb.shape[1] + nt)
        return llm.last_logits(emb, jnp.ones(emb.shape[:2], jnp.int32), cache)[0]

    f_prefill = jax.jit(prefill)
    handle = VLM3RModel(model.cfg, model, tokenizer=None, num_frames=s["frames"])
    stop, pad = stop_ids_array(())
    scfg = SamplingConfig(max_new_tokens=nt)

    def gen_from_embeds(emb):
        cache = model.llm.init_cache(1, emb.shape[1] + nt)
        return generate(handle.engine.step_fn, handle.engine.embed_fn, handle.params, cache, emb,
                        jnp.ones(emb.shape[:2], jnp.int32), jax.random.key(0), stop, pad, config=scfg).tokens

    r: dict = {"params": n_params, "build_s": build_s, "backend": jax.default_backend(), "compile_s": {}, "s": {}}
    first, r["s"]["siglip"], feats = _best(lambda: f_sig(p, frames), repeats)
    r["compile_s"]["siglip"] = first - r["s"]["siglip"]
    first, r["s"]["cut3r"], geo = _best(lambda: f_geo(p, frames), repeats)
    r["compile_s"]["cut3r"] = first - r["s"]["cut3r"]
    first, r["s"]["fusion"], fused = _best(lambda: f_fuse(p, feats, geo), repeats)
    r["compile_s"]["fusion"] = first - r["s"]["fusion"]
    first, r["s"]["projector_splice"], emb = _best(lambda: f_splice(p, fused, ids), repeats)
    r["compile_s"]["projector_splice"] = first - r["s"]["projector_splice"]
    first, r["s"]["llm_prefill"], _ = _best(lambda: f_prefill(p, emb), repeats)
    r["compile_s"]["llm_prefill"] = first - r["s"]["llm_prefill"]
    first, gen_s, toks = _best(lambda: gen_from_embeds(emb), repeats)
    r["compile_s"]["decode"] = first - gen_s
    r["s"]["decode"] = max(gen_s - r["s"]["llm_prefill"], 0.0)
    first, r["s"]["end_to_end"], out = _best(lambda: handle.generate(ids_np, frames, max_new_tokens=nt), repeats)
    r["compile_s"]["end_to_end"] = first - r["s"]["end_to_end"]
    r["spliced_len"] = int(emb.shape[1])
    r["new_tokens"] = int(np.asarray(out).shape[1])
    return r


def start_reference(s: dict, args) -> subprocess.Popen:
    runner = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_vlm3r_reference_side.py")
    env = dict(os.environ)
    extra = [p for p in (args.reference_site or []) if p]
    env["PYTHONPATH"] = os.pathsep.join(extra + [env.get("PYTHONPATH", "")]).strip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    cmd = [args.reference_python, runner, "--src", os.path.abspath(args.reference_src), "--spec", json.dumps(s),
           "--repeats", str(args.repeats)]
    if args.reference_no_heads or args.tiny:
        cmd.append("--no-heads")
    if args.reference_cut3r:
        cmd += ["--cut3r", args.reference_cut3r]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_reference(proc: subprocess.Popen, timeout: float) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((out + "\n" + err).strip().splitlines()[-25:])
        raise RuntimeError(f"reference side failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="smoke run: tiny widths, 2 frames, 4 new tokens")
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per stage after a warm-up (3; --tiny: 1)")
    ap.add_argument("--reference-src", default=None, help="checkout of github.com/VITA-Group/VLM-3R (omit: ours only)")
    ap.add_argument("--reference-cut3r", default=None, help="CUT3R checkout (default: <reference-src>/CUT3R)")
    ap.add_argument("--reference-python", default=sys.executable)
    ap.add_argument("--reference-site", action="append", help="directory put first on the reference's sys.path")
    ap.add_argument("--reference-timeout", type=float, default=3600)
    ap.add_argument("--reference-no-heads", action="store_true",
                    help="skip the reference CUT3R's DPT/pose heads (its code runs them at the hard-coded full size "
                         "and discards the output; ours never runs them). Implied by --tiny.")
    ap.add_argument("--json", default=None, help="write both sides' numbers to this file")
    args = ap.parse_args()

    s = spec(args.tiny, args.frames, args.new_tokens)
    if args.repeats is None:
        args.repeats = 1 if args.tiny else 3
    ref, ref_error, proc = None, None, None
    if args.reference_src:
        # --tiny is a smoke run: both sides run at once to stay under a minute (its times mean
        # nothing); a real run measures the sides one after the other
        try:
            proc = start_reference(s, args) if args.tiny else None
            ours = bench_ours(s, args.repeats)
            proc = proc or start_reference(s, args)
            ref = finish_reference(proc, args.reference_timeout)
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
            ref_error = str(e)
    else:
        ours = bench_ours(s, args.repeats)
    print("PARAMS " + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in ours["params"].items()))
    print(f"VLM-3R forward, {sum(ours['params'].values()) / 1e6:.1f}M params (ours), {s['frames']} frames, prompt {s['prompt_len']} "
          f"-> {ours['spliced_len']} tokens, {s['new_tokens']} new tokens, {ours['backend']} float32")
    head = f"{'stage':18s} {'ours s':>10s} {'compile s':>10s}"
    if ref:
        head += f" {'reference s':>12s} {'speedup':>8s}"
    print(head)
    for st in STAGES:
        line = f"{st:18s} {ours['s'][st]:10.4f} {ours['compile_s'][st]:10.2f}"
        if ref:
            rs = ref["s"].get(st)
            line += f" {rs:12.4f} {rs / max(ours['s'][st], 1e-9):7.2f}x" if rs is not None else f" {'-':>12s}"
        print(line)
    if ref:
        print(f"reference: {ref.get('params', 0) / 1e6:.1f}M params, torch {ref.get('torch')}, "
              f"transformers {ref.get('transformers')}, threads {ref.get('threads')}, notes: {ref.get('notes')}")
    if ref_error:
        print("reference side did not run:\n" + ref_error)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"spec": s, "ours": ours, "reference": ref, "reference_error": ref_error}, f, indent=1)


if __name__ == "__main__":
    main()
