"""What every absl launcher shares (launch/cli.py): --help exits 0, an unknown --config key names
the valid ones, a missing config file and user errors print one line and exit 2."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    env.pop("VLM3R_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("module", ["launch.train", "launch.eval", "data_pipeline.make_dataset"])
def test_help_exits_zero(module):
    r = _run(module, "--help")
    assert r.returncode == 0 and "--config" in r.stdout, r.stderr[-2000:]


def test_unknown_config_key_lists_the_valid_ones():
    r = _run("launch.train", "--config=configs/demo_tiny.py", "--workdir=/tmp/unused", "--config.train.stepz=5")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown config key 'train.stepz'" in r.stderr and "'steps'" in r.stderr


def test_missing_config_file_and_user_errors():
    r = _run("data_pipeline.make_dataset", "--config=configs/nope.py", "--out=/tmp/unused")
    assert r.returncode == 2 and "configs/nope.py' does not exist" in r.stderr and "Traceback" not in r.stderr
    r = _run("launch.eval", "--config=configs/eval_vsibench.py", "--workdir=/tmp/unused",
             "--config.data_root=/nonexistent/bench")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "/nonexistent/bench" in r.stderr


def test_demo_checks_its_arguments_before_any_work(tmp_path):
    for args, msg in ((["--scenes", "5"], "at least 8"), (["--set", "train.stepz=1"], "no field 'stepz'"),
                      (["--data-set", "num_scenes=abc"], "num_scenes")):
        r = _run("launch.demo", "--workdir", str(tmp_path / "w"), *args)
        assert r.returncode == 2 and msg in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "w").exists()
