"""Evaluation on VSI-Bench: ``python -m launch.eval --config configs/eval_vsibench.py --workdir DIR
--config.data_root=/path/to/VSI-Bench [--config.checkpoint=...]``.

Generation settings follow the official lmms-eval run (VLM-3R ``eval_vlm_3r_vsibench.sh`` + task
yaml): 32 frames, greedy (temperature 0, 1 beam), max_new_tokens 16, the official prompts.
"""

from __future__ import annotations

import ml_collections

from configs.common import mesh_config
from vlm3r_jax.eval import prompts


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.benchmark = "vsibench"
    # Benchmark directory: records file (test.jsonl / *.json / *.parquet) + <dataset>/<scene_name>.mp4.
    c.data_root = ""
    c.records = ""  # explicit records file; default: found in data_root
    c.limit = 0  # > 0: only the first N records (smoke runs)

    # Model. Empty checkpoint -> a baseline predictor runs instead (see `predictor`).
    c.checkpoint = ""  # our dir, a released LoRA dir, or a Hub id (Journey9ni/vlm-3r-llava-qwen2-lora[@rev])
    c.base = ""  # LLaVA-Video-Qwen2 base dir or Hub id (lmms-lab/LLaVA-NeXT-Video-7B-Qwen2), released LoRA only
    c.geometry = ""  # CUT3R .pth, for released-format checkpoints
    # CUT3R token cache (launch.extract_geometry --videos <data_root> --out DIR): skip CUT3R; refused
    # unless built with this model's CUT3R weights and num_frames (data_pipeline/geometry_cache.py)
    c.geometry_cache = ""
    c.dtype = ""  # forwarded to api.load_vlm3r when set
    c.predictor = ""  # "" = "model" when checkpoint is set else "chance"; or "chance" | "prior" | "model"
    c.prior_records = ""  # records file the blind prior is fitted on (default: the evaluated records)
    c.text_only = False  # model run with the video removed (answer(video=None, ...))
    c.seed = 0  # chance baseline

    # Generation (official: 32 frames, greedy, 16 new tokens).
    c.num_frames = 32
    c.max_new_tokens = 16
    c.temperature = 0.0  # only greedy decoding is supported by the eval
    c.batch_size = 8  # records per device batch (rounded up to the mesh's data-parallel size)
    c.length_buckets = (128, 256, 512, 1024)  # prompt lengths the jitted decoder is compiled for
    c.worker_count = 2  # Grain worker processes for video decode + tokenization (0: in-process)
    c.mesh = mesh_config()  # mesh.shape (data=-1: every device on data) and logical rules

    # Prompts (official defaults; an empty string means the default, as upstream).
    c.pre_prompt = prompts.PRE_PROMPT
    c.mc_post_prompt = prompts.MC_POST_PROMPT
    c.na_post_prompt = prompts.NA_POST_PROMPT

    # Bookkeeping.
    c.check_videos = "exists"  # "none" | "exists" | "open" (PyAV decodes one frame)
    # numeric answers: "paper" (thinking-in-space, the paper's table) | "lmms-eval" (lmms-eval 0.7:
    # first number anywhere, number words included; VSI-Bench only)
    c.rules = "paper"
    c.zero_target = "raise"  # NA ground truth 0: "raise" (official crashes) | "exact"
    c.retry_failed = False  # on resume, re-run samples whose line says "failed"
    c.baselines = ""  # extra table rows: "chance=/runs/chance,prior=/runs/prior"
    c.include_paper_row = True
    c.chart_baseline = ""  # row drawn next to this run in chart.png, e.g. "VLM-3R (paper)" or "chance"
    c.progress = True
    return c
