"""Compile the train step ahead of time for a TPU slice (or the local devices) and report
per-device memory, without the hardware:

    python -m launch.aot_compile --config configs/qwen2_7b_lora_aot.py --topology v5p-64
    python -m launch.aot_compile --config configs/qwen2_7b_lora_aot.py --topology v6e-16 \\
        --config.data.seq_len=2048 --json_out /tmp/v6e16.json
    python -m launch.aot_compile --config configs/qwen2_tiny_lora_aot.py --topology cpu
    python -m launch.aot_compile --config configs/qwen2_7b_lora_aot.py --topology v5e-16 --num_slices 2
    python -m launch.aot_compile --config configs/vlm3r_7b.py --topology v6e-8 --json_out r.json --dump_hlo h.txt

The last compiles the whole VLM-3R train step of the released recipe (``model.builder=vlm3r``,
vlm3r_jax/train/aot_vlm3r.py): SigLIP, fusion, projector and the LoRA LLM at 32 frames x 210
tokens + text (``aot.seq_len``), CUT3R tokens from the offline cache (``--config.aot.geometry=online``
compiles CUT3R too). Bad input (unknown topology, remat policy or builder, a mesh that does not
divide the devices): one line naming the valid choices, exit 2.

TPU topologies need ``libtpu`` (``pip install 'libtpu==0.0.42.*'`` for jax 0.10.2); it runs on a
CPU-only machine. ``--topology cpu`` compiles for ``jax.devices()`` (use
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` for a fake 8-device mesh). Exit status 1
when the step does not fit the per-device HBM (``--allow_oom`` to only warn).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host compiles; TPU devices are only described

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "AOT config file (configs/*_aot.py).")
_TOPOLOGY = flags.DEFINE_string("topology", "cpu", "TPU slice (v5p-64, v6e-16, ...) or 'cpu' for the local devices.")
_JSON = flags.DEFINE_string("json_out", "", "Write the memory report as JSON here.")
_ALLOW_OOM = flags.DEFINE_bool("allow_oom", False, "Exit 0 even when the step exceeds the HBM.")
_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices of --topology joined over DCN (multi-slice); the mesh "
                               "splits mesh.dcn_data x mesh.dcn_fsdp across them (default: data).")
_DUMP_HLO = flags.DEFINE_string("dump_hlo", "", "Write the optimized HLO text of the compiled step here.")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config configs/qwen2_7b_lora_aot.py")
    from vlm3r_jax.train import aot

    try:
        res = aot.compile_train_step(_CONFIG.value, _TOPOLOGY.value, num_slices=_SLICES.value)
    except aot.AotOutOfMemoryError as e:
        print(f"aot_compile: DOES NOT FIT: {e}", file=sys.stderr)
        if _JSON.value:
            with open(_JSON.value, "w", encoding="utf-8") as f:
                json.dump({**e.extras, "topology": _TOPOLOGY.value, "fits": False, "compile_s": e.compile_s,
                           "error": str(e)}, f, indent=1)
        return 0 if _ALLOW_OOM.value else 1
    except (ValueError, RuntimeError) as e:
        print(f"aot_compile: {e}", file=sys.stderr)
        return 2
    print(res.summary())
    if _JSON.value:
        with open(_JSON.value, "w", encoding="utf-8") as f:
            json.dump(res.as_dict(), f, indent=1)
    if _DUMP_HLO.value:
        with open(_DUMP_HLO.value, "w", encoding="utf-8") as f:
            f.write(res.compiled.as_text())
    if res.hbm_bytes and res.peak_bytes > res.hbm_bytes and not _ALLOW_OOM.value:
        return 1
    return 0


if __name__ == "__main__":
    from launch import cli

    cli.run(lambda argv: sys.exit(main(argv)), help_config="configs/qwen2_tiny_lora_aot.py")
