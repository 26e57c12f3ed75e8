"""The multi-host launchers: --help, argument checks and the commands they would run (--dry-run);
shellcheck-clean when shellcheck is installed."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = [os.path.join(ROOT, "launch", n) for n in ("tpu_pod.sh", "gpu_multihost.sh")]


def _sh(*args, env=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "VLM3R_"))}
    full.update(env or {})
    return subprocess.run(["bash", *args], capture_output=True, text=True, env=full, timeout=60)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    r = _sh(script, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    r = subprocess.run(["shellcheck", *SCRIPTS], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_tpu_pod_dry_run():
    tpu = SCRIPTS[0]
    assert _sh(tpu, "--zone", "z", "--", "--config", "c.py").returncode == 2
    r = _sh(tpu, "--tpu", "t", "--zone", "z", "--no-sync", "--no-install", "--dry-run", "--workdir", "gs://b/r",
            "--", "--config", "configs/x.py", "--config.train.steps=3")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert "--worker=all" in line and "VLM3R_DISTRIBUTED_AUTO=1" in line and "launch.train" in line
    assert "gs://b/r" in line and "steps=3" in line


def test_gpu_multihost_env():
    gpu = SCRIPTS[1]
    r = _sh(gpu, "--", "--config", "c.py")
    assert r.returncode == 2 and "missing" in r.stderr
    r = _sh(gpu, "--dry-run", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "2", "--", "x")
    assert r.returncode == 2 and "below" in r.stderr
    r = _sh(gpu, "--dry-run", "--port", "999", "--", "--config", "c.py",
            env={"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "n1"})
    if r.returncode != 0 and shutil.which("scontrol") is None:
        # outside SLURM the head node comes from an explicit coordinator
        r = _sh(gpu, "--dry-run", "--coordinator", "n1:999", "--", "--config", "c.py",
                env={"SLURM_PROCID": "3", "SLURM_NTASKS": "4"})
    assert r.returncode == 0, r.stderr
    assert "VLM3R_NUM_PROCESSES=4" in r.stdout and "VLM3R_PROCESS_ID=3" in r.stdout
    assert "VLM3R_COORDINATOR_ADDRESS=n1:999" in r.stdout and "launch.train --config c.py" in r.stdout


def test_venv_install_is_retried_after_an_interrupted_pip(tmp_path):
    """launch/_venv.sh stamps .venv only after pip succeeds: a Ctrl-C during the first install
    (pip exits 130) leaves no stamp, so the next run installs again; then it skips pip."""
    (tmp_path / "launch").mkdir()
    shutil.copy(os.path.join(ROOT, "launch", "_venv.sh"), tmp_path / "launch" / "_venv.sh")
    shutil.copy(os.path.join(ROOT, "setup.py"), tmp_path / "setup.py")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    stub = bin_dir / "python"  # records each install; fails while the file 'interrupt' exists
    stub.write_text('#!/usr/bin/env bash\ncase "$*" in\n  *"install -q -e"*) echo "$*" >> "$(dirname "$0")/calls"\n'
                    '    [ -f "$(dirname "$0")/interrupt" ] && exit 130; exit 0;;\n'
                    '  *"uninstall"*) echo "$*" >> "$(dirname "$0")/calls"; exit 0;;\n'
                    '  *"import torchvision"*) [ -f "$(dirname "$0")/cuda_torchvision" ] && exit 1; exit 0;;\n'
                    'esac\nexit 0\n')
    stub.chmod(0o755)
    (bin_dir / "interrupt").touch()

    def source(extras):
        return _sh("-c", f"VLM3R_EXTRAS={extras} source {tmp_path}/launch/_venv.sh")

    assert source("").returncode == 130 and not list((tmp_path / ".venv").glob(".vlm3r_installed*"))
    (bin_dir / "interrupt").unlink()
    assert source("").returncode == 0 and (tmp_path / ".venv" / ".vlm3r_installed").exists()
    assert source("").returncode == 0  # stamped: no pip
    assert source("test,tfds").returncode == 0  # the test extras are a second, separate install
    calls = (bin_dir / "calls").read_text().splitlines()
    assert [c.split()[-1] for c in calls] == [".", ".", ".[test,tfds]"]
    # a torchvision that cannot import (PyPI's CUDA build next to a CPU torch) is removed
    (bin_dir / "cuda_torchvision").touch()
    with open(tmp_path / "setup.py", "a") as f:
        f.write("# changed\n")
    assert source("test,tfds").returncode == 0
    assert (bin_dir / "calls").read_text().splitlines()[-1].endswith("uninstall -q -y torchvision")
