"""The README demo, end to end on the built-in default (CPU, a few minutes to ~20 on 2 cores):

1. generate a small procedural indoor-scene dataset (videos + official-layout metadata + QA),
2. build a tokenizer for it and a tiny random VLM-3R (configs/vlm3r_tiny.py),
3. train it (configs/demo_tiny.py) with the sharded train loop, checkpointing as it goes,
4. evaluate on the held-out scenes with the VSI-Bench metrics next to the blind baselines and
   a control (the same model, each question asked about another scene's video),
5. answer one question about one generated video, and save a loss-curve PNG.

    python -m launch.demo [--workdir runs/demo] [--steps 1200] [--scenes 120] [--set optim.lr=3e-3 ...]

Re-running resumes: finished stages are skipped (data, tokenizer) or resumed (training, eval).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time


def _say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as answers_only


def apply_overrides(cfg, pairs: list[str], what: str) -> None:
    """``["train.steps=100", "optim.lr=1e-3"]`` -> set on ``cfg`` (unknown keys fail with the valid ones)."""
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"{what} override {pair!r} is not KEY=VALUE")
        key, text = pair.split("=", 1)
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            if part not in node:
                raise KeyError(f"{what}: no section {part!r} in {key!r}; valid: {sorted(node.keys())}")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"{what}: no field {leaf!r} in {key!r}; valid: {sorted(node.keys())}")
        value = _parse_value(text)
        if isinstance(node[leaf], (list, tuple)) and isinstance(value, str):
            value = type(node[leaf])(v for v in value.split(",") if v)
        try:
            node[leaf] = value
        except TypeError as e:  # ConfigDict keeps each field's type
            raise ValueError(f"{what} {key}={text!r}: {e}") from e


def make_data(out: str, scenes: int, seed: int, overrides: list[str] | None = None) -> str:
    from configs import data_synthetic
    from data_pipeline.make_dataset import make_dataset
    from vlm3r_jax.eval.baselines import dataset_baselines

    if os.path.exists(os.path.join(out, "stats.json")):
        print(f"dataset exists: {out}")
        return out
    cfg = data_synthetic.get_config("demo")
    cfg.num_scenes = scenes
    cfg.seed = seed
    apply_overrides(cfg, overrides or [], "--data-set")
    make_dataset(cfg, out, baselines=dataset_baselines)
    return out


def make_tokenizer(data: str, out: str, split_digits: bool = False) -> str:
    from data_pipeline.tokenizer_build import build_tokenizer

    if os.path.exists(os.path.join(out, "tokenizer.json")):
        return out
    with open(os.path.join(data, "train_llava.json"), encoding="utf-8") as f:
        rows = json.load(f)
    texts = [t["value"] for r in rows for t in r["conversations"]]
    texts += ["You are a helpful assistant.", "<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n"]
    for name in ("vsibench_test.jsonl", "vstibench_test.jsonl"):
        with open(os.path.join(data, name), encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                texts += [r["question"], *(r.get("options") or [])]
    return build_tokenizer(texts, out, vocab_size=768, split_digits=split_digits)


def group_by_scene(data: str, per_row: int, seed: int, name: str = "train_grouped.json") -> str:
    """``train_llava.json`` -> multi-turn records: up to ``per_row`` shuffled questions about one
    scene share one conversation (the video appears once, in the first user turn). A short CPU run
    then sees ``per_row`` times more answers per encoded video; evaluation stays single-turn."""
    import random

    out = os.path.join(data, name)
    if per_row <= 1:
        return os.path.join(data, "train_llava.json")
    with open(os.path.join(data, "train_llava.json"), encoding="utf-8") as f:
        rows = json.load(f)
    by_video: dict[str, list[dict]] = {}
    for r in rows:
        by_video.setdefault(r["video"], []).append(r)
    rng = random.Random(seed)
    grouped = []
    for video in sorted(by_video):
        recs = by_video[video]
        rng.shuffle(recs)
        for i in range(0, len(recs), per_row):
            chunk = recs[i:i + per_row]
            conv = []
            for j, r in enumerate(chunk):
                q, a = r["conversations"][0]["value"], r["conversations"][1]["value"]
                conv += [{"from": "human", "value": q if j == 0 else q.replace("<image>\n", "", 1)},
                         {"from": "gpt", "value": a}]
            grouped.append({**{k: v for k, v in chunk[0].items() if k != "conversations"},
                            "id": f"{chunk[0]['id']}+{len(chunk) - 1}", "conversations": conv})
    with open(out, "w", encoding="utf-8") as f:
        json.dump(grouped, f)
    return out


def loss_curve(workdir: str, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vlm3r_jax.train.metrics import read_metrics

    rows = [r for r in read_metrics(workdir) if "loss" in r]
    by_step = {r["step"]: r["loss"] for r in rows}
    steps = sorted(by_step)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [by_step[s] for s in steps])
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (answer tokens)")
    ax.set_title("tiny VLM-3R on procedural scenes")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def blind_rows(data: str, out: str) -> dict[str, str]:
    """Scores of the engine's blind baselines: chance, the answer prior fitted on the train split
    (the demo's target is prior + 10) and the text prior (what reading the question alone gives;
    absent from datasets made before it existed)."""
    from vlm3r_jax.eval import vsibench

    rows = {}
    for name, label in (("chance", "chance"), ("prior", "blind prior"), ("text_prior", "text prior (blind)")):
        path = os.path.join(data, "baselines", f"vsibench_{name}.jsonl")
        if name == "text_prior" and not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            samples = [json.loads(line) for line in f]
        scores = vsibench.score(samples)
        os.makedirs(os.path.join(out, name), exist_ok=True)
        dest = os.path.join(out, name, "scores.json")
        with open(dest, "w", encoding="utf-8") as f:
            json.dump(scores, f, indent=1)
        rows[label] = dest
    return rows


def other_scene_records(records: str, out: str) -> str:
    """``records`` (JSONL) with every record's video swapped for the next held-out scene's (sorted
    by name, wrapping around); questions and ground truths stay. The control row of the demo table."""
    with open(records, encoding="utf-8") as f:
        recs = [json.loads(line) for line in f if line.strip()]
    scenes = sorted({(r["dataset"], r["scene_name"]) for r in recs})
    if len(scenes) < 2:
        raise ValueError(f"{records}: the other-scene control needs at least 2 scenes, found {len(scenes)}")
    nxt = {a: b for a, b in zip(scenes, scenes[1:] + scenes[:1])}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for r in recs:
            dataset, scene = nxt[(r["dataset"], r["scene_name"])]
            f.write(json.dumps({**r, "dataset": dataset, "scene_name": scene}) + "\n")
    return out


# what follows training (export, evaluation with the control row, one answer): 60-70 s on the
# 2-core boxes the demo was timed on, with room for a slower machine
AFTER_TRAINING_S = 100.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/demo", help="where everything is written (default: runs/demo)")
    ap.add_argument("--steps", type=int, default=1200,
                    help="training steps (default 1200: 15-19 min on a quiet 2-core CPU)")
    ap.add_argument("--batch-size", type=int, default=16,
                    help="global batch size in rows of data.questions_per_row questions each (default 16)")
    ap.add_argument("--scenes", type=int, default=120, help="procedural scenes to generate (default 120)")
    ap.add_argument("--eval-limit", type=int, default=0, help="evaluate only the first N questions (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-budget", type=float, default=20.0, metavar="MINUTES",
                    help="wall-time budget of the whole demo (default 20): training stops early, with a "
                         "checkpoint, when the remaining stages would not fit; 0 = always run every step")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of configs/demo_tiny.py, e.g. --set optim.lr=1e-3 (repeatable)")
    ap.add_argument("--data-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of configs/data_synthetic.py:demo, e.g. --data-set num_per_task=8")
    args = ap.parse_args(argv)
    # the held-out fifth of the scenes needs 2 for the other-scene control (eval_fraction 0.2)
    if args.scenes < 8:
        ap.error(f"--scenes {args.scenes}: at least 8, so that 2 or more scenes are held out for evaluation")
    if args.steps < 1:
        ap.error(f"--steps {args.steps}: at least 1")

    from configs import data_synthetic, demo_tiny, eval_vsibench
    from launch import eval as eval_launcher
    from vlm3r_jax import api
    from vlm3r_jax.train import vlm3r_task

    try:  # a bad --set / --data-set fails here, not after the dataset is generated
        apply_overrides(demo_tiny.get_config(), args.set, "--set")
        apply_overrides(data_synthetic.get_config("demo"), args.data_set, "--data-set")
    except (KeyError, ValueError) as e:
        ap.error(str(e).strip('"'))
    t0 = time.time()
    wd = os.path.abspath(args.workdir)
    if os.path.exists(wd) and not os.path.isdir(wd):
        ap.error(f"--workdir {wd} is a file; pass a directory")
    _say("1/5 procedural scene dataset")
    data = make_data(os.path.join(wd, "data"), args.scenes, args.seed, args.data_set)
    t_data = time.time() - t0
    _say("2/5 tokenizer and tiny VLM-3R")
    cfg = demo_tiny.get_config()
    apply_overrides(cfg, [p for p in args.set if p.startswith("data.split_digits=")], "--set")
    tok_dir = make_tokenizer(data, os.path.join(wd, "tokenizer"), split_digits=bool(cfg.data.split_digits))
    cfg.data.root = data
    cfg.data.tokenizer_dir = tok_dir
    cfg.data.train_files = (group_by_scene(data, cfg.data.questions_per_row, args.seed),)
    cfg.train.steps = args.steps
    cfg.train.batch_size = args.batch_size
    cfg.train.seed = args.seed
    cfg.model.seed = args.seed
    apply_overrides(cfg, args.set, "--set")
    if args.time_budget > 0:
        cfg.train.max_seconds = max(60.0, 60 * args.time_budget - (time.time() - t0) - AFTER_TRAINING_S)
    _say(f"3/5 training {args.steps} steps (checkpoints in {wd}/train/checkpoints)")
    t1 = time.time()
    result, model_dir = vlm3r_task.run(cfg, os.path.join(wd, "train"))
    t_train = time.time() - t1
    if result.preempted:  # a grace period has no room for the evaluation
        print(f"stopped by SIGTERM at step {result.last_step} of {cfg.train.steps} (checkpointed); the same "
              f"command resumes")
        return vlm3r_task.PREEMPTED_EXIT_CODE
    if result.last_step < cfg.train.steps:
        print(f"training stopped at step {result.last_step} of {cfg.train.steps} to stay inside --time-budget "
              f"{args.time_budget:g} min (--time-budget 0 runs every step)")
    curve = loss_curve(os.path.join(wd, "train"), os.path.join(wd, "loss_curve.png"))
    # a re-run of a finished training has no fresh history: the metrics file has the whole run
    from vlm3r_jax.train.metrics import read_metrics

    losses = [r["loss"] for r in (result.history or read_metrics(os.path.join(wd, "train"))) if "loss" in r]
    first, last = (losses[0], losses[-1]) if losses else (float("nan"), float("nan"))
    print(f"loss {first:.3f} -> {last:.3f}; curve: {curve}")

    _say("4/5 evaluation on held-out scenes (VSI-Bench metrics)")
    baselines = blind_rows(data, os.path.join(wd, "eval"))
    ecfg = eval_vsibench.get_config()
    ecfg.data_root = data
    ecfg.records = os.path.join(data, "vsibench_test.jsonl")
    ecfg.checkpoint = model_dir
    ecfg.num_frames = cfg.data.num_frames
    ecfg.batch_size = 16
    ecfg.limit = args.eval_limit
    ecfg.include_paper_row = False
    ecfg.baselines = ",".join(f"{k}={v}" for k, v in baselines.items())
    ecfg.chart_baseline = "blind prior"
    t2 = time.time()
    # Does the model use the video? The same questions, each paired with another held-out scene's
    # video: the inputs look the same, only the information is gone. (VSI-Bench's vision-disabled
    # run, the video removed, puts a model trained only with video out of distribution.)
    ccfg = ecfg.copy_and_resolve_references()
    ccfg.records = other_scene_records(ecfg.records, os.path.join(wd, "eval", "vsibench_other_scene.jsonl"))
    ccfg.baselines = ""
    ccfg.chart_baseline = ""
    print("control: the same model, each question asked about another scene's video")
    eval_launcher.run(ccfg, os.path.join(wd, "eval", "model_other_scene"))
    ecfg.baselines += f",model on another scene's video={os.path.join(wd, 'eval', 'model_other_scene')}"
    print("the model:")
    res = eval_launcher.run(ecfg, os.path.join(wd, "eval", "model"))  # prints the table
    t_eval = time.time() - t2

    _say("5/5 a question about one generated video")
    model = api.load_vlm3r(model_dir, num_frames=cfg.data.num_frames)
    with open(os.path.join(data, "vsibench_test.jsonl"), encoding="utf-8") as f:
        rec = json.loads(f.readline())
    video = os.path.join(data, rec["dataset"], rec["scene_name"] + ".mp4")
    from vlm3r_jax.eval.prompts import build_question

    question = build_question(rec, "vsibench")
    answer = model.answer(video, question, max_new_tokens=16)
    print(f"video:    {video}\nquestion: {question}\nanswer:   {answer!r} (ground truth {rec['ground_truth']!r})")
    overall = (res or {}).get("scores", {}).get("overall")
    print(f"\ndone in {time.time() - t0:.0f} s (data {t_data:.0f} s, training {t_train:.0f} s, eval {t_eval:.0f} s). "
          f"overall={overall}; outputs under {wd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
