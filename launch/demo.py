"""The README demo, end to end on the built-in default (CPU, a few minutes to ~20 on 2 cores):

1. generate a small procedural indoor-scene dataset (videos + official-layout metadata + QA),
2. build a tokenizer for it and a tiny random VLM-3R (configs/vlm3r_tiny.py),
3. train it (configs/demo_tiny.py) with the sharded train loop, checkpointing as it goes,
4. evaluate on the held-out scenes with the VSI-Bench metrics next to the blind baselines and
   a control (the same model, each question asked about another scene's video),
5. answer one question about one generated video with the reconstruction picture, and save a
   loss-curve PNG.

    python -m launch.demo [--workdir runs/demo] [--config.train.steps=300] [--data.num_scenes=120] \\
        [--config.optim.lr=3e-3 ...]

``--config.*`` are the fields of configs/demo_tiny.py (the training run), ``--data.*`` those of
configs/data_synthetic.py:demo (the generated scenes); ``--help`` lists both with their defaults.

Re-running resumes: finished stages are skipped (data, tokenizer) or resumed (training, eval).
"""

from __future__ import annotations

import json
import os
import sys
import time


def _say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def make_data(out: str, cfg) -> str:
    """The scenes of ``cfg`` (configs/data_synthetic.py:demo with the command line's ``--data.*``)."""
    from data_pipeline.make_dataset import make_dataset
    from vlm3r_jax.eval.baselines import dataset_baselines

    if os.path.exists(os.path.join(out, "stats.json")):
        print(f"dataset exists: {out}")
        return out
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


# the flag spellings of the argparse release: accepted for one more release with a note
LEGACY = {"--set": "--config.", "--data-set": "--data.", "--steps": "--config.train.steps",
          "--batch-size": "--config.train.batch_size", "--scenes": "--data.num_scenes",
          "--eval-limit": "--eval_limit", "--time-budget": "--time_budget"}


def parse_args(argv: list[str]):
    """``argv`` (no program name) -> the parsed flags; a usage error exits 2 with one line, before
    any work (a bad value must not fail after the dataset is generated)."""
    from absl import flags
    from ml_collections import config_flags

    from launch import cli

    def define(fv, full_argv: list[str]) -> None:
        config_flags.DEFINE_config_file("config", cli.resolve_spec("configs/demo_tiny.py"),
                                        "The training run (configs/demo_tiny.py).", flag_values=fv,
                                        lock_config=True, sys_argv=full_argv)
        config_flags.DEFINE_config_file("data", cli.resolve_spec("configs/data_synthetic.py") + ":demo",
                                        "The generated scenes (configs/data_synthetic.py:demo).", flag_values=fv,
                                        lock_config=True, sys_argv=full_argv)
        flags.DEFINE_string("workdir", "runs/demo", "Where everything is written.", flag_values=fv)
        flags.DEFINE_integer("seed", 0, "Seed of the scenes, the model and the training order (sets data.seed, "
                             "config.model.seed and config.train.seed).", flag_values=fv)
        flags.DEFINE_integer("eval_limit", 0, "Evaluate only the first N questions (0 = all).", flag_values=fv)
        flags.DEFINE_float("time_budget", 20.0, "Wall-time budget of the whole demo in minutes: training stops "
                           "early, with a checkpoint, when the remaining stages would not fit; 0 = every step.",
                           flag_values=fv)

    fv, rest = cli.parse_local(argv, define, __doc__, legacy=LEGACY, more_configs=("data",))
    # --seed sets these three; a value given for one of them would otherwise be overwritten silently
    seeds = [a.split("=")[0] for a in cli.rewrite_legacy(argv, LEGACY)
             if a.split("=")[0] in ("--data.seed", "--config.train.seed", "--config.model.seed")]
    # the held-out fifth of the scenes needs 2 for the other-scene control (eval_fraction 0.2)
    problems = [f"unexpected arguments {rest}" if rest else "",
                f"--data.num_scenes={fv.data.num_scenes}: at least 8, so that 2 or more scenes are held out "
                "for evaluation" if fv.data.num_scenes < 8 else "",
                f"--config.train.steps={fv.config.train.steps}: at least 1" if fv.config.train.steps < 1 else "",
                f"--workdir {fv.workdir} is a file; pass a directory" if os.path.isfile(fv.workdir) else "",
                f"{seeds[0]}: the demo sets data.seed, config.train.seed and config.model.seed from --seed; "
                "pass --seed=N instead" if seeds else ""]
    if msg := next((p for p in problems if p), ""):
        cli.usage_error(msg)
    return fv


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from configs import eval_vsibench
    from launch import eval as eval_launcher
    from vlm3r_jax import api
    from vlm3r_jax.train import vlm3r_task

    t0 = time.time()
    wd = os.path.abspath(args.workdir)
    _say("1/5 procedural scene dataset")
    dcfg = args.data
    dcfg.seed = args.seed
    data = make_data(os.path.join(wd, "data"), dcfg)
    t_data = time.time() - t0
    _say("2/5 tokenizer and tiny VLM-3R")
    cfg = args.config
    tok_dir = make_tokenizer(data, os.path.join(wd, "tokenizer"), split_digits=bool(cfg.data.split_digits))
    cfg.data.root = data
    cfg.data.tokenizer_dir = tok_dir
    cfg.data.train_files = (group_by_scene(data, cfg.data.questions_per_row, args.seed),)
    cfg.train.seed = args.seed
    cfg.model.seed = args.seed
    if args.time_budget > 0:
        cfg.train.max_seconds = max(60.0, 60 * args.time_budget - (time.time() - t0) - AFTER_TRAINING_S)
    _say(f"3/5 training {cfg.train.steps} steps (checkpoints in {wd}/train/checkpoints)")
    t1 = time.time()
    result, model_dir = vlm3r_task.run(cfg, os.path.join(wd, "train"))
    t_train = time.time() - t1
    if result.preempted:  # a grace period has no room for the evaluation
        print(f"stopped by SIGTERM at step {result.last_step} of {cfg.train.steps} (checkpointed); the same "
              f"command resumes")
        return vlm3r_task.PREEMPTED_EXIT_CODE
    if result.last_step < cfg.train.steps:
        print(f"training stopped at step {result.last_step} of {cfg.train.steps} to stay inside --time_budget "
              f"{args.time_budget:g} min (--time_budget=0 runs every step)")
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
    from vlm3r_jax.infer.viz import render_reconstruction

    picture = os.path.join(wd, "answer.png")  # what CUT3R reconstructed, captioned with the answer
    render_reconstruction(model.reconstruct(video, num_frames=cfg.data.num_frames), picture, question=question,
                          answer=answer)
    print(f"picture:  {picture}")
    overall = (res or {}).get("scores", {}).get("overall")
    print(f"\ndone in {time.time() - t0:.0f} s (data {t_data:.0f} s, training {t_train:.0f} s, eval {t_eval:.0f} s). "
          f"overall={overall}; outputs under {wd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
