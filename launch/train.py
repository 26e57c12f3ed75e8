"""Train VLM-3R: ``python -m launch.train --config configs/<name>.py --workdir DIR [--config.x=y ...]``.

Resumes from the latest checkpoint in ``DIR/checkpoints`` when there is one (params, optimizer,
step, RNG and the data iterator position). On SIGTERM it writes a checkpoint and exits with status
143 (as if killed by the signal, so a scheduler re-runs it) without exporting the model; a
non-finite loss stops the run with the last good checkpoint kept. Metrics go to ``DIR/metrics.jsonl``,
the console and TensorBoard event files in ``DIR``; the trained model is exported to ``DIR/model`` (load it with
``vlm3r_jax.api.load_vlm3r``).

Configs: configs/demo_tiny.py (CPU demo), configs/vlm3r_7b.py (released shapes + paper recipe).
Any field can be overridden, e.g. ``--config.train.steps=100 --config.mesh.shape.fsdp=4``; an
unknown key fails with the list of valid ones.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_FLAGS: dict = {}


def _define_flags() -> None:
    """Defined only when run as a program, so importing this module never clashes flag names."""
    _FLAGS["config"] = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).",
                                                       lock_config=True)
    _FLAGS["workdir"] = flags.DEFINE_string("workdir", None, "Output directory: checkpoints, metrics, model.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config, workdir = _FLAGS["config"].value, _FLAGS["workdir"].value
    if config is None or not workdir:
        print(__doc__, file=sys.stderr)
        raise app.UsageError("both --config and --workdir are required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from vlm3r_jax.train import distributed

    # Must precede every other JAX call (multi-host: SLURM, TPU pods, explicit VLM3R_* env vars).
    distributed.initialize_from_env()
    from vlm3r_jax.train import vlm3r_task

    result, out = vlm3r_task.run(config, workdir)
    if result.preempted:
        print(f"stopped by SIGTERM at step {result.last_step} of {config.train.steps}: checkpointed in "
              f"{workdir}/checkpoints, not exported; the same command resumes "
              f"(exit status {vlm3r_task.PREEMPTED_EXIT_CODE})")
        sys.exit(vlm3r_task.PREEMPTED_EXIT_CODE)
    if result.last_step < config.train.steps:
        print(f"stopped by train.max_seconds at step {result.last_step} of {config.train.steps} (checkpointed; "
              f"the same command resumes); the model so far is exported to {out}")
    else:
        print(f"trained to step {result.last_step}; model exported to {out}")


if __name__ == "__main__":
    _define_flags()
    from launch import cli

    cli.run(main, help_config="configs/demo_tiny.py")
