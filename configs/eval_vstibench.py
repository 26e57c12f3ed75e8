"""Evaluation on VSTI-Bench (VLM-3R ``eval_vlm_3r_vstibench.sh``): same settings as VSI-Bench;
records carry ``video_path`` relative to ``data_root`` and ``mc_answer`` for multiple choice."""

from __future__ import annotations

import ml_collections

from configs.eval_vsibench import get_config as _vsi_config


def get_config() -> ml_collections.ConfigDict:
    c = _vsi_config()
    c.benchmark = "vstibench"
    return c
