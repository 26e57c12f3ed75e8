"""Hub repo ids wherever a checkpoint path is accepted (vlm3r_jax/convert/hub.py), against a local
stand-in for the Hub (tests/_hub_server.py, via HF_ENDPOINT) and a pre-filled standard cache. The
repos hold the golden tiny release (../shared/golden/vlm3r_tiny) under the released model's ids."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
from _hub_server import FakeHub

from vlm3r_jax.convert import hub

LORA, BASE, TOWER = "Journey9ni/vlm-3r-llava-qwen2-lora", "lmms-lab/LLaVA-NeXT-Video-7B-Qwen2", \
    "tiny-random/siglip-vlm3r-test-a"


def _files(d: str) -> dict[str, bytes]:
    out = {}
    for f in sorted(os.listdir(d)):
        with open(os.path.join(d, f), "rb") as fh:
            out[f] = fh.read()
    return out


@pytest.fixture(scope="module")
def repos(golden_dir):
    g = os.path.join(golden_dir, "vlm3r_tiny")
    return {LORA: _files(os.path.join(g, "vlm3r_lora")), BASE: _files(os.path.join(g, "base_llava_video_qwen2")),
            TOWER: _files(os.path.join(g, "siglip_hub_snapshot"))}


@pytest.fixture
def geometry(golden_dir):
    return os.path.join(golden_dir, "vlm3r_tiny", "cut3r", "cut3r_512_dpt_4_64.pth")


def _online(monkeypatch, tmp_path, endpoint: str) -> str:
    """Hub access through ``endpoint`` with an empty cache under tmp_path; returns the cache dir."""
    from huggingface_hub import constants

    cache = str(tmp_path / "hf_cache")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # frozen at import from conftest's default
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True, raising=False)
    return cache


@pytest.fixture
def fake_hub(repos, monkeypatch, tmp_path):
    with FakeHub(repos) as h:
        _online(monkeypatch, tmp_path, h.url)
        yield h


def _params(model) -> dict:
    import jax

    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(model.params)
            if not jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key)}


def test_released_ids_load_through_the_hub_protocol(fake_hub, repos, geometry, golden_dir):
    from vlm3r_jax import api

    model = api.load_vlm3r(LORA, base=BASE, geometry=geometry)
    lora_dir = model.info["lora_dir"]
    assert lora_dir.endswith(os.path.join("snapshots", fake_hub.commits[LORA]))
    # only what the loader reads: the PEFT model card stays on the Hub
    assert sorted(os.listdir(lora_dir)) == sorted(set(repos[LORA]) - {"README.md"})
    # the SigLIP config named by mm_vision_tower came from its own repo
    assert any(p.startswith(f"/{TOWER}/resolve/") for _, p, _ in fake_hub.requests)
    local = api.load_vlm3r(os.path.join(golden_dir, "vlm3r_tiny", "vlm3r_lora"),
                           base=os.path.join(golden_dir, "vlm3r_tiny", "base_llava_video_qwen2"), geometry=geometry)
    assert model.cfg == local.cfg
    a, b = _params(model), _params(local)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_revision_pins_and_errors_are_one_line(fake_hub):
    sha = fake_hub.commits[BASE]
    assert hub.resolve(f"{BASE}@{sha}", hub.CONFIG_FILES).endswith(sha)
    assert hub.resolve(f"{BASE}@main", hub.CONFIG_FILES).endswith(sha)
    with pytest.raises(hub.HubError, match="neither a local path nor a model on the Hub") as e:
        hub.resolve("no-such-org/no-such-model", hub.QWEN2_FILES)
    assert "\n" not in str(e.value)
    with pytest.raises(hub.HubError, match="revision 'v9' does not exist") as e:
        hub.resolve(f"{BASE}@v9", hub.QWEN2_FILES)
    assert "\n" not in str(e.value)
    with pytest.raises(hub.HubError, match="no files matching"):
        hub.resolve(TOWER, ["*.safetensors"])


def test_cli_reports_a_missing_repo_in_one_line(fake_hub, tmp_path, capsys):
    from launch import infer

    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    rc = infer.main(["--checkpoint", "no-such-org/no-such-model", "--video", str(video), "--question", "how many?"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no-such-org/no-such-model" in err[0] and "on the Hub" in err[0]


def test_interrupted_download_resumes(repos, monkeypatch, tmp_path):
    from huggingface_hub import constants

    # several read chunks per file, so the bytes before the cut are kept and the rest is asked for
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    with FakeHub(repos, cut_once={(BASE, "model.safetensors")}) as h:
        _online(monkeypatch, tmp_path, h.url)
        folder = hub.resolve(BASE, hub.QWEN2_FILES)
    with open(os.path.join(folder, "model.safetensors"), "rb") as f:
        assert f.read() == repos[BASE]["model.safetensors"]
    gets = [r for m, p, r in h.requests if m == "GET" and p.endswith("/model.safetensors")]
    assert len(gets) == 2 and gets[0] is None and gets[1].startswith("bytes=") and int(gets[1][6:-1]) > 0


def _fill_cache(root: str, repo: str, files: dict[str, bytes], commit: str = "a" * 40) -> None:
    """The standard Hub cache layout: blobs, a snapshot of symlinks to them, refs/main."""
    import hashlib

    top = os.path.join(root, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(top, "blobs"))
    os.makedirs(os.path.join(top, "refs"))
    snap = os.path.join(top, "snapshots", commit)
    os.makedirs(snap)
    with open(os.path.join(top, "refs", "main"), "w") as f:
        f.write(commit)
    for name, data in files.items():
        blob = os.path.join(top, "blobs", hashlib.sha256(data).hexdigest())
        with open(blob, "wb") as f:
            f.write(data)
        os.symlink(os.path.relpath(blob, snap), os.path.join(snap, name))


def test_prefilled_cache_offline(repos, geometry, monkeypatch, tmp_path):
    home = tmp_path / "hf_home"
    for repo, files in repos.items():
        _fill_cache(str(home / "hub"), repo, files)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # never asked
    from vlm3r_jax.convert.vlm3r_release import build_release_config

    lora, base, geo = hub.resolve_vlm3r(LORA, BASE, geometry)
    assert lora == str(home / "hub" / f"models--{LORA.replace('/', '--')}" / "snapshots" / ("a" * 40))
    assert geo == geometry
    cfg, info = build_release_config(lora, base, geo)
    # the tower config (3 layers, 2 of them used) came from the cached mm_vision_tower repo
    assert cfg.vision.num_layers_used == 2 and info["base_dir"] == base


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_and_no_cache(monkeypatch, tmp_path):
    _online(monkeypatch, tmp_path, f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(hub.HubError, match="cannot reach the Hub .* not in the Hugging Face cache"):
        hub.resolve(LORA, hub.VLM3R_FILES)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE is set"):
        hub.resolve(f"{BASE}@main", hub.QWEN2_FILES)


def test_local_paths_win_and_cut3r_is_not_on_the_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a lookup would fail loudly
    monkeypatch.chdir(tmp_path)
    os.makedirs("org/model")
    assert hub.resolve("org/model", hub.QWEN2_FILES) == "org/model"
    assert hub.resolve(None) is None and hub.resolve("") == ""
    assert hub.resolve("runs/x/model") == "runs/x/model"  # not an id: the loader says it is missing
    with pytest.raises(hub.HubError, match="Google Drive"):
        hub.resolve("checkpoints/cut3r_512_dpt_4_64.pth", hub.CUT3R_FILES)
    assert hub.parse_repo_id("org/name@v1.0") == ("org/name", "v1.0")
    for not_id in ("/abs/dir", "./org/name", "org/name/sub", "org--x/name", "org/model.safetensors", "name"):
        assert hub.parse_repo_id(not_id) is None, not_id
