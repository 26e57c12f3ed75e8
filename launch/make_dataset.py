"""Generate the procedural-scene dataset (scenes, videos, metadata, QA, eval files, stats) and
its blind baselines; see :mod:`data_pipeline.make_dataset` for the layout of ``--out``.

    python -m launch.make_dataset --config configs/data_synthetic.py --out DIR
    python -m launch.make_dataset --config configs/data_synthetic.py:tiny --out DIR
    python -m launch.make_dataset --config configs/data_synthetic.py --config.num_scenes=20 --out DIR
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from data_pipeline.make_dataset import make_dataset
from launch import cli
from vlm3r_jax.eval.baselines import dataset_baselines

_CONFIG = config_flags.DEFINE_config_file("config", "configs/data_synthetic.py", "Dataset config (get_config).")
_OUT = flags.DEFINE_string("out", None, "Output directory (created).")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bar.")


def main(argv):
    del argv
    if not _OUT.value:
        raise app.UsageError("--out DIR is required")
    stats = make_dataset(_CONFIG.value, _OUT.value, progress=not _QUIET.value, baselines=dataset_baselines)
    n = {k: sum(v.values()) for k, v in stats["qa_per_task"].items()}
    print(f"wrote {stats['scenes']['total']} scenes to {_OUT.value}: {n['train']} train QA, "
          f"{sum(stats['eval_records']['vsibench'].values())} VSI + {sum(stats['eval_records']['vstibench'].values())} "
          f"VSTI eval records; render {stats['timing_s']['render_and_write_wall']} s, "
          f"QA {stats['timing_s']['qa_and_formats_wall']} s")


if __name__ == "__main__":
    cli.run(main, help_config="configs/data_synthetic.py")
