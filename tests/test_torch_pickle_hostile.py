"""The pickle-free .pth reader under hostile bytes: out-of-bounds views, decompression bombs,
BUILD on allowed globals, deep nesting, and a bounded fuzz over a real checkpoint."""

import argparse
import os
import struct
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

from vlm3r_jax.convert.errors import CheckpointError
from vlm3r_jax.convert.torch_pickle import TorchPickleSource
from vlm3r_jax.convert.torch_save import save_torch

PTH = os.path.join("vlm3r_tiny", "cut3r", "cut3r_512_dpt_4_64.pth")


def _storage_pid(key: str, numel: int, kind: str = "FloatStorage") -> bytes:
    """Pickle ops pushing the persistent id ("storage", torch.<kind>, key, "cpu", numel)."""
    def s(x: str) -> bytes:
        b = x.encode()
        return b"X" + struct.pack("<I", len(b)) + b

    return b"(" + s("storage") + b"ctorch\n" + kind.encode() + b"\n" + s(key) + s("cpu") + b"J" + struct.pack(
        "<i", numel) + b"tQ"


def _tensor_pkl(numel: int, offset: int, size: tuple, stride: tuple) -> bytes:
    """{'w': _rebuild_tensor_v2(storage, offset, size, stride)} as raw protocol-2 pickle ops."""
    def ints(xs):
        return b"(" + b"".join(b"J" + struct.pack("<i", x) for x in xs) + b"t"

    return (b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(" + _storage_pid("0", numel)
            + b"J" + struct.pack("<i", offset) + ints(size) + ints(stride) + b"\x89tRs.")


def _archive(path, pkl: bytes, storages: dict[str, bytes], compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compress) as z:
        z.writestr("a/data.pkl", pkl)
        z.writestr("a/byteorder", "little")
        for k, v in storages.items():
            z.writestr(f"a/data/{k}", v)


def test_handmade_tensor_record_reads(tmp_path):
    p = tmp_path / "ok.pth"
    _archive(p, _tensor_pkl(6, 1, (2, 2), (2, 1)), {"0": np.arange(6, dtype=np.float32).tobytes()})
    np.testing.assert_array_equal(TorchPickleSource(str(p)).get("w"), [[1, 2], [3, 4]])


@pytest.mark.parametrize("offset,size,stride", [
    (0, (100,), (-50_000_000,)),   # one negative stride: reads far before the buffer
    (99, (100,), (-1,)),           # stays "inside" by the old sum check, reads heap bytes
    (0, (2, 2), (10**6, -10**6 + 1)),  # mixed signs cancel in (size-1)*stride sums
    (-5, (2,), (1,)),
    (0, (2, 3), (1, 1)),           # overlapping view with more elements than the storage
])
def test_out_of_bounds_views_refused(tmp_path, offset, size, stride):
    p = tmp_path / "oob.pth"
    _archive(p, _tensor_pkl(4, offset, size, stride), {"0": np.zeros(4, np.float32).tobytes()})
    with pytest.raises(CheckpointError, match="negative|reaches past"):
        TorchPickleSource(str(p)).get("w")


def test_zip_bomb_refused_without_inflating(tmp_path):
    p = tmp_path / "bomb.pth"
    # 64 MiB of zeros deflate to ~64 KiB; the storage only needs 16 bytes
    _archive(p, _tensor_pkl(4, 0, (4,), (1,)), {"0": bytes(64 << 20)}, compress=zipfile.ZIP_DEFLATED)
    assert os.path.getsize(p) < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="decompression bomb"):
            TorchPickleSource(str(p)).get("w")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


def _build_on_global(module: str, name: str, attr: str) -> bytes:
    # c<module>\n<name>\n  (None, {attr: 1})  BUILD  -> setattr(global, attr, 1) in the stock unpickler
    return (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\nN}X" + struct.pack("<I", len(attr))
            + attr.encode() + b"K\x01s\x86b.")


@pytest.mark.parametrize("module,name,attr", [
    ("torch", "FloatStorage", "dtype"),
    ("argparse", "Namespace", "__init__"),
    ("argparse", "Namespace", "__getattr__"),
    ("torch._utils", "_rebuild_tensor_v2", "__call__"),
    ("collections", "OrderedDict", "__init__"),
])
def test_build_on_allowed_global_cannot_poison_the_process(tmp_path, golden_dir, module, name, attr):
    p = tmp_path / "poison.pth"
    _archive(p, _build_on_global(module, name, attr), {})
    with pytest.raises(CheckpointError):
        TorchPickleSource(str(p), allow_namespace=True)
    assert argparse.Namespace(x=1).x == 1 and not hasattr(argparse.Namespace, "dtype")
    src = TorchPickleSource(os.path.join(golden_dir, PTH), allow_namespace=True)
    assert src.get("model.pose_token").shape == (1, 1, 32)
    assert "ARCroco3DStereoConfig" in src.obj["args"].model
    assert isinstance(src.to_numpy()["args"], argparse.Namespace)


def test_deep_nesting_and_cycles_refused(tmp_path):
    n = 200_000
    deep = b"\x80\x02" + (b"}X\x01\x00\x00\x00a" * n) + b"}" + b"s" * n + b"."
    p = tmp_path / "deep.pth"
    _archive(p, deep, {})
    with pytest.raises(CheckpointError, match="deeper than"):
        TorchPickleSource(str(p))
    # a list that contains itself: ]  q\x00 (memo)  h\x00 (get)  a (append)
    p = tmp_path / "cycle.pth"
    _archive(p, b"\x80\x02}X\x01\x00\x00\x00a]q\x00h\x00as.", {})
    with pytest.raises(CheckpointError, match="deeper than"):
        TorchPickleSource(str(p)).to_numpy()


def test_shared_reference_blowup_refused(tmp_path):
    # 60 levels of [x, x]: a 1 KB pickle that is 2**60 nodes as a tree
    ops = b"\x80\x02}X\x01\x00\x00\x00a]q\x00"
    for i in range(60):
        ops += b"(h" + bytes([i]) + b"h" + bytes([i]) + b"lq" + bytes([i + 1]) + b"0"
    p = tmp_path / "dag.pth"
    _archive(p, ops + b"0h\x3cs.", {})
    with pytest.raises(CheckpointError, match="far larger than the file"):
        TorchPickleSource(str(p)).to_numpy()


def test_memo_index_bomb_refused(tmp_path):
    # LONG_BINPUT 0x7fffffff: the C unpickler would zero-fill a 32 GB memo array
    p = tmp_path / "memo.pth"
    _archive(p, b"\x80\x02}r\xff\xff\xff\x7f.", {})
    with pytest.raises(CheckpointError, match="memo slot"):
        TorchPickleSource(str(p))


_FUZZ = r"""
import io, random, sys, zipfile
import numpy as np
from vlm3r_jax.convert.errors import CheckpointError
from vlm3r_jax.convert.torch_pickle import TorchPickleSource
src_path, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
raw = open(src_path, "rb").read()
zin = zipfile.ZipFile(io.BytesIO(raw))
members = {i.filename: zin.read(i) for i in zin.infolist()}
pkl = [k for k in members if k.endswith("data.pkl")][0]
rng = random.Random(0)
stats = {"error": 0, "load": 0}
for case in range(n):
    kind = case % 3
    if kind == 2:  # the archive bytes themselves (headers, central directory, data)
        b = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        blob = bytes(b)
    else:
        m = dict(members)
        name = pkl if kind == 0 else rng.choice(sorted(m))
        b = bytearray(m[name])
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            i = rng.randrange(len(b) + 1) if b else 0
            if op == 0 and b:
                b[min(i, len(b) - 1)] = rng.randrange(256)
            elif op == 1:
                b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
            elif b:
                del b[i:i + rng.randint(1, 8)]
        m[name] = bytes(b)
        bio = io.BytesIO()
        with zipfile.ZipFile(bio, "w") as z:
            for k, v in m.items():
                z.writestr(k, v)
        blob = bio.getvalue()
    with open(out, "wb") as f:
        f.write(blob)
    try:
        s = TorchPickleSource(out, allow_namespace=True)
        for k in list(s.keys()):
            a = s.get(k)
            assert a.shape == s.shape(k) and a.dtype == s.dtype(k), k
        s.to_numpy()
        stats["load"] += 1
    except CheckpointError:
        stats["error"] += 1
print(stats)
"""


def test_fuzz_real_checkpoint_never_crashes(tmp_path, golden_dir):
    """Mutated pickle, storage and archive bytes: every case is a CheckpointError or a load whose
    tensors have their declared shapes. Runs in a child so that a segfault fails the test cleanly."""
    r = subprocess.run([sys.executable, "-c", _FUZZ, os.path.join(golden_dir, PTH), str(tmp_path / "f.pth"), "240"],
                       capture_output=True, text=True, timeout=300, cwd=os.getcwd())
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    assert "'error'" in r.stdout


def test_our_writer_still_round_trips(tmp_path):
    p = tmp_path / "rt.pth"
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    save_torch(str(p), {"model": {"w": w, "t": w.T}, "args": argparse.Namespace(model="X()")})
    s = TorchPickleSource(str(p), allow_namespace=True)
    np.testing.assert_array_equal(s.get("model.w"), w)
    np.testing.assert_array_equal(s.get("model.t"), w.T)
