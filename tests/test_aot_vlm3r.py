"""The whole-VLM-3R AOT builder (train/aot_vlm3r.py) and the FLOP rule (train/flops.py): a tiny
VLM-3R step compiles for the local devices and reports its fields, the FLOP rule on hand-computed
cases, bad input as one line with exit 2, and ``bash bench/accelerator.sh --smoke``."""

import json
import os
import subprocess
import sys

import pytest

from configs.vlm3r_tiny_aot import get_config
from vlm3r_jax.models.qwen2 import Qwen2Config
from vlm3r_jax.train import aot
from vlm3r_jax.train.flops import Part, step_flops_per_row

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flop_rule_by_hand():
    parts = [Part("frozen tower first", tokens=10, trainable=0, frozen=100, attention_fwd=50),
             Part("trainable", tokens=10, trainable=5, frozen=20),
             Part("frozen after", tokens=4, trainable=0, frozen=7, attention_fwd=8)]
    # 10 * 2 * 100 + 50 | 10 * (6 * 5 + 4 * 20) | 4 * 4 * 7 + 3 * 8
    assert step_flops_per_row(parts) == 2050 + 1100 + 136
    # Qwen2, 1 layer, d=4, 2 query heads of 2, 1 KV head, FFN 3, vocab 5, LoRA rank 1, 4 tokens:
    # q 16 + k 8 + v 8 + o 16 + gate 12 + up 12 + down 12 + head 20 = 104 frozen (4N); LoRA r (in + out):
    # 8 + 6 + 6 + 8 + 7 + 7 + 7 = 49 (6N); causal attention 4 * 2 heads * 2 * 4 tokens / 2 = 32 (x3)
    c = Qwen2Config(vocab_size=5, hidden_size=4, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=3)
    assert aot.qwen2_train_flops_per_token(c, seq_len=4, lora_rank=1) == 6 * 49 + 4 * 104 + 3 * 32
    assert aot.qwen2_train_flops_per_token(c, seq_len=4) == 6 * 104 + 3 * 32  # full fine-tuning


def test_tiny_vlm3r_step_compiles_for_local_devices():
    cfg = get_config()
    cfg.model.llm.num_layers = cfg.model.vision.num_hidden_layers = 1
    cfg.train.grad_accum_steps = 1
    res = aot.compile_train_step(cfg, "cpu")
    d = res.as_dict()
    assert d["builder"] == "vlm3r" and d["num_frames"] == 2 and d["seq_len"] == 56
    assert d["video_tokens"] == 2 * 20 and d["text_len"] == 56 - 40 + 1 and d["geometry"] == "cache"
    assert d["attention"] == "cpu" and d["remat"] == "none" and d["fits"] is None
    assert d["memory_bytes"]["total_bytes"] > 0 and d["flops_per_step"] > 0
    # LoRA + fusion + projector train; SigLIP (CUT3R is not built into the step: cached tokens) is frozen
    assert 0 < res.trainable_params < res.frozen_params
    json.dumps(d)


def test_bad_input_is_one_line_exit_2(tmp_path):
    cfg = get_config()
    cfg.model.llm.remat = "everything"
    with pytest.raises(ValueError, match="dots_saveable"):
        aot.compile_train_step(cfg, "cpu")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    for args, want in ((["--config", "configs/vlm3r_tiny.py"], "no model.builder"),
                       (["--config", "configs/vlm3r_tiny_aot.py", "--topology", "v7x-9"], "v6e-8")):
        r = subprocess.run([sys.executable, "-m", "launch.aot_compile", *args], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("aot_compile:")]
        assert r.returncode == 2 and len(lines) == 1 and want in lines[0], r.stderr[-2000:]
        assert "Traceback" not in r.stderr


def test_accelerator_benchmark_smoke(tmp_path):
    results = tmp_path / "RESULTS.md"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    r = subprocess.run(["bash", os.path.join(ROOT, "bench", "accelerator.sh"), "--smoke", "--out", str(tmp_path),
                        "--results", str(results)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["train"]["step_s"] > 0 and res["decode"]["tokens_per_s"] > 0
    assert res["towers"]["siglip_frames_per_s"] > 0 and res["towers"]["cut3r_frames_per_s"] > 0
    assert os.listdir(tmp_path / "trace")  # the jax.profiler trace
    assert "| smoke (tiny shapes) |" in results.read_text()


@pytest.mark.slow  # 127 s compile (37 s CPU) on the shared 2-core host, 2026-12-07
def test_tiny_vlm3r_step_compiles_for_a_tpu_topology(tmp_path):
    if aot.libtpu_path() is None:
        pytest.skip("libtpu not installed (pip install 'libtpu==0.0.42.*' or set TPU_LIBRARY_PATH)")
    out = tmp_path / "v5e4.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "launch.aot_compile", "--config", "configs/vlm3r_tiny_aot.py",
                        "--topology", "v5e-4", "--json_out", str(out)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["builder"] == "vlm3r" and rep["num_devices"] == 4 and rep["fits"] is True
    assert rep["attention"] in ("xla", "splash") and 0 < rep["hbm_fraction"] < 0.05
