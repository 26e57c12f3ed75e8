"""Benchmark evaluation: ``python -m launch.eval --config configs/eval_vsibench.py --workdir DIR
[--config.data_root=...] [--config.checkpoint=...]``.

Writes ``DIR/samples.jsonl`` (per sample, resumable), ``DIR/scores.json`` (per task),
``DIR/table.md`` (paper column order + footer) and ``DIR/chart.png``; for VSI-Bench also
``DIR/lmms_eval/{results.json, samples_vsibench.jsonl}`` in lmms-eval 0.7's shapes.
``--lmms_eval_samples FILE`` scores an lmms-eval ``--log_samples`` file instead (``config.rules``). Without a checkpoint (or with
``--config.predictor=chance|prior``) it runs a baseline, which needs no model.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from vlm3r_jax.eval import baselines, report, runner
from vlm3r_jax.eval import records as records_lib

_FLAGS: dict = {}


def _define_flags() -> None:
    """Flags are defined only when this module runs as a program, so other entry points (the
    demo, tests) can import :func:`run` without clashing absl flag names."""
    _FLAGS["config"] = config_flags.DEFINE_config_file(
        "config", None, "Eval config file (configs/eval_*.py).", lock_config=True
    )
    _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Output directory (resumes when it holds samples.jsonl).")
    _FLAGS["lmms_eval_samples"] = flags.DEFINE_string(
        "lmms_eval_samples", None, "Score this lmms-eval --log_samples VSI-Bench file (by config.rules) instead of running")


def make_model_predictor(cfg: Any) -> runner.PredictFn:
    """predict_fn over ``vlm3r_jax.api.load_vlm3r(cfg.checkpoint)``.

    A loaded :class:`~vlm3r_jax.infer.vlm3r_model.VLM3RModel` runs as a
    :class:`~vlm3r_jax.eval.sharded.ShardedVLM3RPredictor`: its ``prepare`` (video decode + views
    + prompt tokens, the Grain pipeline's eval transform) runs in ``cfg.worker_count`` Grain
    workers, and each batch is padded to a multiple of the mesh's data-parallel size
    (``cfg.mesh.shape``) and decoded with params sharded by ``cfg.mesh.rules``. Any other model
    object gets ``model.answer_batch(videos, questions, ...)`` or ``model.answer(...)`` per record;
    ``num_frames`` is passed where the signature accepts it."""
    from vlm3r_jax import api

    if cfg.temperature != 0.0:
        raise ValueError(
            "the benchmark eval is greedy (temperature 0, as the official run); set --config.temperature=0"
        )
    kwargs = {"dtype": cfg.dtype} if cfg.dtype else {}
    model = api.load_vlm3r(cfg.checkpoint, base=cfg.base or None, geometry=cfg.geometry or None, **kwargs)
    name = "VLM-3R (ours, text only)" if cfg.text_only else "VLM-3R (ours)"
    from vlm3r_jax.infer.vlm3r_model import VLM3RModel

    if isinstance(model, VLM3RModel):
        from vlm3r_jax import sharding
        from vlm3r_jax.eval.sharded import ShardedVLM3RPredictor

        mesh = sharding.mesh_from_config(cfg.mesh)
        return ShardedVLM3RPredictor(
            model,
            batch_size=cfg.batch_size,
            mesh=mesh,
            rules=sharding.rules_from_config(cfg.mesh.rules),
            num_frames=cfg.num_frames,
            max_new_tokens=cfg.max_new_tokens,
            text_only=cfg.text_only,
            length_buckets=tuple(cfg.length_buckets),
            name=name,
            geometry_cache=cfg.get("geometry_cache", "") or "",
            video_root=cfg.data_root,
        )
    batched = getattr(model, "answer_batch", None)
    fn = batched or model.answer
    extra = {"num_frames": cfg.num_frames} if "num_frames" in inspect.signature(fn).parameters else {}

    def predict(batch: list[dict]) -> list[str]:
        videos = [None if cfg.text_only else rec["video_path"] for rec in batch]
        if batched is not None:
            return list(batched(videos, [r["prompt"] for r in batch], max_new_tokens=cfg.max_new_tokens, **extra))
        return [model.answer(v, r["prompt"], max_new_tokens=cfg.max_new_tokens, **extra) for v, r in zip(videos, batch)]

    predict.name = name  # type: ignore[attr-defined]
    predict.uses_jax = True  # type: ignore[attr-defined]
    return predict


def make_predictor(cfg: Any, recs: list[dict]) -> tuple[runner.PredictFn, str]:
    """(predict_fn, check_videos mode) for the configured predictor."""
    kind = cfg.predictor or ("model" if cfg.checkpoint else "chance")
    if kind == "chance":
        return baselines.chance_predictor(cfg.seed, cfg.benchmark), cfg.check_videos
    if kind == "prior":
        fit = records_lib.load_records(cfg.data_root, cfg.benchmark, cfg.prior_records) if cfg.prior_records else recs
        return baselines.prior_predictor(fit, cfg.benchmark), cfg.check_videos
    if kind == "model":
        if not cfg.checkpoint:
            raise ValueError("predictor 'model' needs --config.checkpoint")
        # Text-only runs never touch the video, but a missing video still fails the sample so all
        # rows of the table share one denominator.
        return make_model_predictor(cfg), cfg.check_videos
    raise ValueError(f"config.predictor={kind!r}; expected '', 'chance', 'prior' or 'model'")


def run(cfg: Any, workdir: str) -> dict | None:
    """The launcher body (also called by tests)."""
    if not cfg.data_root:
        raise ValueError("set --config.data_root to the benchmark directory")
    # The benchmark's Grain source (records parsed lazily from line offsets), read once here: the
    # runner needs every id for resuming and the final table; the per-record work (prompt, video
    # check, decode + tokenization for a model) streams through a Grain dataset in the runner.
    recs = records_lib.load_records(cfg.data_root, cfg.benchmark, cfg.records or None, cfg.limit)
    if not recs:
        raise ValueError(f"no records to evaluate in {cfg.records or cfg.data_root}")
    predict_fn, check_videos = make_predictor(cfg, recs)
    writer = True
    if getattr(predict_fn, "uses_jax", False):
        import jax

        writer = jax.process_index() == 0  # every host runs the same batches; one writes
    return runner.run_eval(
        recs,
        predict_fn,
        workdir,
        cfg.batch_size,
        cfg.benchmark,
        check_videos=check_videos,
        zero_target=cfg.zero_target,
        rules=cfg.get("rules", "paper"),
        prompt_kwargs={
            "pre_prompt": cfg.pre_prompt,
            "mc_post_prompt": cfg.mc_post_prompt,
            "na_post_prompt": cfg.na_post_prompt,
        },
        baselines=report.parse_baselines(cfg.baselines),
        include_paper_row=cfg.include_paper_row,
        chart_baseline=cfg.chart_baseline or None,
        retry_failed=cfg.retry_failed,
        progress=cfg.progress and writer,
        writer=writer,
        # workers only pay off for a predictor with per-record host work (decode + tokenize)
        worker_count=cfg.get("worker_count", 0) if getattr(predict_fn, "prepare", None) else 0,
        identity=run_identity(cfg),
    )


def _fingerprint(path: str) -> str:
    """Names, sizes and modification times of the files under ``path``: changes when a checkpoint
    is rewritten (trained further, exported again), without reading the weights."""
    import hashlib

    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            st = os.stat(os.path.join(root, name))
            h.update(f"{os.path.relpath(os.path.join(root, name), path)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def run_identity(cfg: Any) -> dict:
    """What decides the answers beyond the predictor's name: resuming a workdir whose samples came
    from another checkpoint or other settings starts over (runner.run_eval)."""
    ident = {k: cfg.get(k) for k in ("seed", "num_frames", "max_new_tokens", "text_only", "pre_prompt",
                                     "mc_post_prompt", "na_post_prompt", "prior_records")}
    ident["predictor_kind"] = cfg.get("predictor")
    if cfg.checkpoint:
        from vlm3r_jax.convert import hub

        ckpt = hub.resolve(cfg.checkpoint, hub.VLM3R_FILES)  # a Hub id: its snapshot (commit) folder
        ident.update(checkpoint=os.path.abspath(ckpt), weights=_fingerprint(ckpt))
    return ident


def score_lmms_eval_samples(cfg: Any, path: str, workdir: str) -> dict:
    """Scores an lmms-eval ``--log_samples`` file with our scorer under ``cfg.rules``; writes
    ``WORKDIR/scores.json`` and ``table.md`` (which name the rules) and returns the scores."""
    from vlm3r_jax import storage
    from vlm3r_jax.eval import lmms_eval_io, vsibench

    if cfg.benchmark != "vsibench":
        raise ValueError(f"--lmms_eval_samples reads VSI-Bench logs; config.benchmark is {cfg.benchmark!r}")
    rules = cfg.get("rules", "paper")
    samples = lmms_eval_io.read_log_samples(path)
    scores = vsibench.score(samples, cfg.zero_target, rules=rules)
    counts = {"_total": len(samples), **vsibench.question_type_counts(samples)}
    table = report.markdown_table("vsibench", {f"lmms-eval log ({os.path.basename(path)})": scores}, None, counts)
    table += f"\n{report.rules_line(rules)}\n"
    storage.makedirs(workdir)
    report.write_json(storage.join(workdir, "scores.json"),
                      {"benchmark": "vsibench", "source": path, "rules": rules, "scores": scores, "counts": counts})
    storage.write_atomic(storage.join(workdir, "table.md"), table)
    print(table)
    return scores


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _FLAGS["workdir"].value:
        raise app.UsageError("--workdir is required")
    if _FLAGS["lmms_eval_samples"].value:
        score_lmms_eval_samples(_FLAGS["config"].value, _FLAGS["lmms_eval_samples"].value, _FLAGS["workdir"].value)
        return
    run(_FLAGS["config"].value, _FLAGS["workdir"].value)


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["config"])
    from launch import cli

    cli.run(main, help_config="configs/eval_vsibench.py")
