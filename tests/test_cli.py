"""What every absl launcher shares (launch/cli.py): --help exits 0, an unknown --config key names
the valid ones, a missing config file and user errors print one line and exit 2."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    env.pop("VLM3R_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("module, field", [
    ("launch.train", "--config.train.steps=300"), ("launch.eval", "--config.max_new_tokens=16"),
    ("launch.make_dataset", "--config.num_scenes=200"), ("launch.infer", "--config.max_new_tokens=64"),
    ("launch.demo", "--data.num_scenes=120"), ("launch.aot_compile", "--config.data.seq_len="),
    ("launch.extract_geometry", "--config.checkpoint=")])
def test_help_lists_the_config_fields(module, field):
    """--help exits 0 and lists every config field with its default and meaning."""
    r = _run(module, "--help")
    assert r.returncode == 0 and "Fields of configs/" in r.stdout and field in r.stdout, r.stderr[-2000:]


def test_config_help_reads_the_meanings_from_the_comments():
    from launch import config_help

    docs = config_help.field_docs(os.path.join(ROOT, "configs", "demo_tiny.py"))
    assert "answers" in docs["data.label_policy"]  # the comment block above the field
    assert "checkpoint and stop" in docs["train.max_seconds"]  # the trailing comment
    assert "checkpoint dir" in docs["model.init"]  # in vlm3r_tiny.model_config(), which fills c.model
    assert config_help.meaning("model.llm.hidden_size", docs) == "width of the hidden states"  # the glossary


def test_unknown_config_key_lists_the_valid_ones():
    r = _run("launch.train", "--config=configs/demo_tiny.py", "--workdir=/tmp/unused", "--config.train.stepz=5")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown config key 'train.stepz'" in r.stderr and "'steps'" in r.stderr


def test_missing_config_file_and_user_errors():
    r = _run("launch.make_dataset", "--config=configs/nope.py", "--out=/tmp/unused")
    assert r.returncode == 2 and "configs/nope.py' does not exist" in r.stderr and "Traceback" not in r.stderr
    r = _run("launch.eval", "--config=configs/eval_vsibench.py", "--workdir=/tmp/unused",
             "--config.data_root=/nonexistent/bench")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "/nonexistent/bench" in r.stderr


@pytest.mark.parametrize("args, msg", [
    (["--data.num_scenes=5"], "at least 8"), (["--config.train.stepz=1"], "no field 'stepz'"),
    (["--data.num_scenes=abc"], "num_scenes takes an int (default 120)"), (["--unknown"], "'unknown'"),
    # the argparse release's spellings: still accepted, with a deprecation note
    (["--scenes", "5"], "at least 8"), (["--set", "train.stepz=1"], "no field 'stepz'"),
    (["--data-set", "num_scenes=abc"], "num_scenes"),
    # --seed sets every seed: one given on its own would be overwritten, so it is refused
    (["--config.train.seed=5"], "pass --seed=N instead"), (["--set", "model.seed=5"], "--config.model.seed")])
def test_demo_checks_its_arguments_before_any_work(tmp_path, args, msg):
    r = _run("launch.demo", "--workdir", str(tmp_path / "w"), *args)
    errors = [line for line in r.stderr.splitlines() if not line.startswith("note: deprecated")]
    assert r.returncode == 2 and msg in r.stderr and len(errors) == 1, r.stderr[-2000:]
    assert ("deprecated" in r.stderr) == (args[0] in ("--scenes", "--set", "--data-set"))
    assert not (tmp_path / "w").exists()


def test_demo_sh_rejects_an_unknown_flag_in_one_line():
    """The README's main command, when its .venv is installed for this setup.py (never runs pip)."""
    import hashlib

    stamp = os.path.join(ROOT, ".venv", ".vlm3r_installed")
    want = hashlib.sha256(open(os.path.join(ROOT, "setup.py"), "rb").read()).hexdigest()[:16]
    if not os.path.exists(stamp) or open(stamp).read().strip() != want:
        pytest.skip("launch/demo.sh would install into .venv first")
    r = subprocess.run(["bash", "launch/demo.sh", "--unknown"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: "), r.stderr[-2000:]


def _preempted_run(calls):
    def run(cfg, workdir, **_):
        calls.append(workdir)
        return SimpleNamespace(preempted=True, last_step=3, history=[]), None

    return run


def test_train_exits_143_after_a_sigterm_checkpoint(monkeypatch, tmp_path, capsys):
    """A preempted run must not look finished to a scheduler (exit 0 would end a half-trained job)."""
    from configs import demo_tiny
    from launch import train as launch_train
    from vlm3r_jax.train import distributed, vlm3r_task

    calls = []
    monkeypatch.setattr(vlm3r_task, "run", _preempted_run(calls))
    monkeypatch.setattr(distributed, "initialize_from_env", lambda: None)
    monkeypatch.setitem(launch_train._FLAGS, "config", SimpleNamespace(value=demo_tiny.get_config()))
    monkeypatch.setitem(launch_train._FLAGS, "workdir", SimpleNamespace(value=str(tmp_path)))
    with pytest.raises(SystemExit) as e:
        launch_train.main(["launch.train"])
    assert e.value.code == vlm3r_task.PREEMPTED_EXIT_CODE == 143 and calls == [str(tmp_path)]
    assert "stopped by SIGTERM at step 3" in capsys.readouterr().out


def test_demo_stops_after_a_sigterm_checkpoint(monkeypatch, tmp_path):
    """No evaluation after SIGTERM: the grace period before SIGKILL is too short for it."""
    from launch import demo
    from launch import eval as eval_launcher
    from vlm3r_jax.train import vlm3r_task

    calls = []
    monkeypatch.setattr(vlm3r_task, "run", _preempted_run(calls))
    monkeypatch.setattr(eval_launcher, "run", lambda *a, **k: pytest.fail("evaluated after SIGTERM"))
    rc = demo.main(["--workdir", str(tmp_path), "--data.num_scenes=8", "--config.train.steps=2", "--time_budget=0"])
    assert rc == 143 and calls == [str(tmp_path / "train")]


def test_a_preempted_run_is_not_exported(monkeypatch, tmp_path):
    from configs import demo_tiny
    from vlm3r_jax.convert import vlm3r_ours
    from vlm3r_jax.train import loop, vlm3r_task

    class _Iter:
        def close(self):
            pass

    monkeypatch.setattr(vlm3r_task, "build_model", lambda cfg: (None, None, None))
    monkeypatch.setattr(vlm3r_task, "train_iterator", lambda cfg, vcfg, tok: _Iter())
    monkeypatch.setattr(loop, "train", lambda *a, **k: SimpleNamespace(preempted=True, last_step=2))
    monkeypatch.setattr(vlm3r_ours, "save_ours", lambda *a, **k: pytest.fail("exported after SIGTERM"))
    result, out = vlm3r_task.run(demo_tiny.get_config(), str(tmp_path))
    assert result.preempted and out is None
