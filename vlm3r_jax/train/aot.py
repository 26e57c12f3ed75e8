"""Ahead-of-time compilation of the train step for a device topology we do not have.

``compile_train_step(cfg, topology)`` builds the model abstractly (``nnx.eval_shape``: no
weights are allocated), splits the trainables, derives every sharding from the logical-axis
rules, and runs ``jax.jit(step, in_shardings=..., out_shardings=...).lower(...).compile()`` on a
mesh made of the topology's devices. With ``libtpu`` installed, ``jax.experimental.topologies``
describes a TPU slice (``v5p-64``, ``v6e-16``, ...) on a CPU-only machine, so sharding mistakes and
out-of-memory show up before a pod is rented. ``topology="cpu"`` compiles for the local devices.

The model comes from a builder registered under ``cfg.model.builder`` (see
:func:`register_model_builder`); ``qwen2_lora`` (the Qwen2 decoder + LoRA) is built in, and the
full VLM-3R registers its own builder the same way.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vlm3r_jax import sharding
from vlm3r_jax.layers.attention import resolve_implementation, target_platform
from vlm3r_jax.models.lora import LoRAConfig, attach_lora
from vlm3r_jax.models.qwen2 import Qwen2, Qwen2Config
from vlm3r_jax.train.flops import Part, attention_fwd, step_flops_per_row
from vlm3r_jax.train.optimizer import make_optimizer
from vlm3r_jax.train.state import TrainState
from vlm3r_jax.train.step import LossFn, answer_token_xent, jit_train_step, make_train_step
from vlm3r_jax.train.trainable import split_trainable

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class TpuTopology:
    """A Cloud TPU slice as ``jax.experimental.topologies`` describes it (the values of
    MaxText's ``accelerator_to_spec_map``). ``hbm_gib`` is per JAX device."""

    topology_name: str
    chip_config_name: str
    chips_per_host_bounds: tuple[int, int, int]
    num_devices: int
    hbm_gib: float


def _v5p(shape: str, n: int) -> TpuTopology:  # megacore: one JAX device per chip (2 TensorCores)
    return TpuTopology(f"v5:{shape}", "megacore", (2, 2, 1), n, 95.0)


def _v6e(shape: str, n: int) -> TpuTopology:
    return TpuTopology(f"v6e:{shape}", "default", (2, 2, 1), n, 32.0)


def _v5e(shape: str, n: int) -> TpuTopology:
    return TpuTopology(f"v5e:{shape}", "default", (2, 2, 1), n, 16.0)


def _v4(shape: str, n: int) -> TpuTopology:
    return TpuTopology(f"v4:{shape}", "megacore", (2, 2, 1), n, 32.0)


TPU_TOPOLOGIES: dict[str, TpuTopology] = {
    "v5p-8": _v5p("2x2x1", 4), "v5p-16": _v5p("2x2x2", 8), "v5p-32": _v5p("2x2x4", 16),
    "v5p-64": _v5p("2x4x4", 32), "v5p-128": _v5p("4x4x4", 64), "v5p-256": _v5p("4x4x8", 128),
    "v6e-1": _v6e("1x1", 1), "v6e-4": _v6e("2x2", 4), "v6e-8": _v6e("2x4", 8), "v6e-16": _v6e("4x4", 16),
    "v6e-32": _v6e("4x8", 32), "v6e-64": _v6e("8x8", 64), "v6e-256": _v6e("16x16", 256),
    "v5e-4": _v5e("2x2", 4), "v5e-16": _v5e("4x4", 16), "v5e-32": _v5e("4x8", 32), "v5e-64": _v5e("8x8", 64),
    "v4-8": _v4("2x2x1", 4), "v4-16": _v4("2x2x2", 8), "v4-32": _v4("2x2x4", 16), "v4-64": _v4("2x4x4", 32),
}
LOCAL_TOPOLOGIES = ("cpu", "local")


def topology_devices(topology: str, num_slices: int = 1) -> list[Any]:
    """Devices to build the mesh from: the local ones for ``cpu``/``local``, otherwise the
    (abstract) devices of ``num_slices`` TPU slices named like ``v5p-64`` (each device knows its
    ``slice_index``). Raises with the fix when the name is unknown or ``libtpu`` is missing/unusable."""
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    if topology in LOCAL_TOPOLOGIES:
        if num_slices > 1:
            raise ValueError(f"--num_slices {num_slices} needs a TPU topology (v5p-8, v6e-16, ...), not {topology!r}")
        return list(jax.devices())
    if topology not in TPU_TOPOLOGIES:
        raise ValueError(
            f"unknown topology {topology!r}; valid: {', '.join(LOCAL_TOPOLOGIES + tuple(TPU_TOPOLOGIES))}")
    spec = TPU_TOPOLOGIES[topology]
    if libtpu_path() is None:
        raise RuntimeError(
            f"compiling for {topology} needs libtpu, which was not found (no `libtpu` module, "
            "TPU_LIBRARY_PATH unset). Install the version that matches jax "
            f"{jax.__version__} (what `pip install 'jax[tpu]=={jax.__version__}'` pulls: libtpu 0.0.42.* for "
            "jax 0.10.2): `pip install 'libtpu==0.0.42.*'`, or `pip install --no-deps --target DIR "
            "'libtpu==0.0.42.*'` and TPU_LIBRARY_PATH=DIR/libtpu/libtpu.so to keep it out of a shared venv. "
            "It runs on a CPU-only machine. Or pass --topology cpu to compile for the local devices."
        )
    # Several libtpu users on one machine (parallel tests, other JAX processes) would otherwise
    # fail on /tmp/libtpu_lockfile: describing a topology does not touch any TPU.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(
            topology_name=spec.topology_name, platform="tpu", chip_config_name=spec.chip_config_name,
            chips_per_host_bounds=spec.chips_per_host_bounds, num_slices=num_slices, wrap=(False, False, False))
    except Exception as e:  # libtpu raises XlaRuntimeError subclasses with the real reason inside
        raise RuntimeError(
            f"libtpu could not describe topology {topology} ({spec.topology_name}): {e}. If the message "
            "mentions /tmp/libtpu_lockfile another process holds libtpu: wait for it, or remove the stale file."
        ) from e
    devices = list(desc.devices)
    if len(devices) != spec.num_devices * num_slices:
        raise RuntimeError(f"{topology} x {num_slices}: libtpu returned {len(devices)} devices, expected "
                           f"{spec.num_devices * num_slices}")
    return devices


def libtpu_path() -> str | None:
    """The libtpu shared library JAX would load: ``TPU_LIBRARY_PATH`` or the ``libtpu`` package."""
    env = os.environ.get("TPU_LIBRARY_PATH")
    if env and os.path.isfile(env):
        return env
    found = importlib.util.find_spec("libtpu")
    if found is None or not found.submodule_search_locations:
        return None
    path = os.path.join(list(found.submodule_search_locations)[0], "libtpu.so")
    return path if os.path.isfile(path) else None


# --- model builders --------------------------------------------------------------------------
@dataclasses.dataclass
class ModelSpec:
    """What a builder returns: ``factory()`` constructs the model (called under ``nnx.eval_shape``,
    so no memory is used), ``loss_fn(model, micro_batch) -> (loss sum, token count)`` and the
    global batch as ``{name: jax.ShapeDtypeStruct([global_batch, ...])}``. For the report:
    ``flops_per_token`` (forward + backward, x the batch's first two dims) or
    ``step_flops(abstract model)`` (the whole global step), and ``extras`` (JSON fields; a
    callable value is evaluated while the target platform is active)."""

    factory: Callable[[], nnx.Module]
    loss_fn: LossFn
    batch: dict[str, jax.ShapeDtypeStruct]
    flops_per_token: float | None = None
    step_flops: Callable[[nnx.Module], float] | None = None
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


ModelBuilder = Callable[[ml_collections.ConfigDict], ModelSpec]
MODEL_BUILDERS: dict[str, ModelBuilder] = {}
# builders defined in modules that import this one register themselves when first asked for
_BUILDER_MODULES = {"vlm3r": "vlm3r_jax.train.aot_vlm3r"}


def register_model_builder(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: ``@register_model_builder("vlm3r") def build(cfg) -> ModelSpec``."""

    def deco(fn: ModelBuilder) -> ModelBuilder:
        MODEL_BUILDERS[name] = fn
        return fn

    return deco


def builder_names() -> list[str]:
    """Every model builder a config may name: registered ones and those imported on first use."""
    return sorted(set(MODEL_BUILDERS) | set(_BUILDER_MODULES))


def get_model_builder(name: str) -> ModelBuilder:
    """A registered name, or ``package.module:function`` (imported, so it may also register)."""
    if ":" in name:
        mod, fn = name.split(":", 1)
        return getattr(importlib.import_module(mod), fn)
    if name in _BUILDER_MODULES and name not in MODEL_BUILDERS:
        importlib.import_module(_BUILDER_MODULES[name])
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model builder {name!r}; registered: {builder_names()} "
                         "(or give 'package.module:function')")
    return MODEL_BUILDERS[name]


def qwen2_train_flops_per_token(c: Any, seq_len: int, lora_rank: int = 0) -> float:
    """Per token, by the rule of train/flops.py: 6N for the LoRA adapters (rank ``lora_rank`` on
    every attention/MLP Linear), 4N for the frozen base and LM head (0 rank: full fine-tuning,
    6N for all), plus causal attention."""
    d, h, nq, nkv, f = c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads, c.intermediate_size
    shapes = [(d, nq * h), (d, nkv * h), (d, nkv * h), (nq * h, d), (d, f), (d, f), (f, d)]
    dense = c.num_layers * sum(i * o for i, o in shapes) + d * c.vocab_size
    lora = c.num_layers * sum(lora_rank * (i + o) for i, o in shapes)
    attn = attention_fwd(c.num_layers, nq, h, 1, seq_len, causal=True)
    trainable, frozen = (lora, dense) if lora_rank else (dense, 0)
    return step_flops_per_row([Part("qwen2", 1.0, trainable, frozen, attn)])


@register_model_builder("qwen2_lora")
def build_qwen2_lora(cfg: ml_collections.ConfigDict) -> ModelSpec:
    """Qwen2 decoder with LoRA on every attention/MLP Linear; batch ``input_ids``/``labels``
    int32 [global_batch, seq_len]. ``cfg.model``: the :class:`Qwen2Config` fields; ``cfg.lora``:
    rank, alpha, dropout, targets; ``cfg.data``: global_batch, seq_len."""

    fields = {f.name for f in dataclasses.fields(Qwen2Config)}
    mc = Qwen2Config(**{k: v for k, v in cfg.model.items() if k in fields})
    lc = LoRAConfig(rank=cfg.lora.rank, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout, targets=tuple(cfg.lora.targets))

    def factory() -> nnx.Module:
        m = Qwen2(mc, rngs=nnx.Rngs(0))
        attach_lora(m, lc, rngs=nnx.Rngs(1))
        return m

    max_labels = int(cfg.train.get("max_label_tokens", 0))

    def loss_fn(model, batch):
        hidden, _ = model.hidden_states(batch["input_ids"])
        return answer_token_xent(hidden, batch["labels"], model.head, max_labels)

    b, t = int(cfg.data.global_batch), int(cfg.data.seq_len)
    batch = {k: jax.ShapeDtypeStruct((b, t), jnp.int32) for k in ("input_ids", "labels")}
    rank = lc.rank if cfg.train.get("train_lora", True) else 0
    return ModelSpec(factory, loss_fn, batch, qwen2_train_flops_per_token(mc, t, rank),
                     extras={"builder": "qwen2_lora", "seq_len": t, "remat": mc.remat,
                             "attention": lambda: resolve_implementation(mc.attention_impl)})


class AotOutOfMemoryError(RuntimeError):
    """The compiler itself rejected the step for exceeding the device memory; ``extras`` (the
    builder's report fields) and ``compile_s`` go into the JSON report all the same."""

    def __init__(self, extras: dict[str, Any], compile_s: float, message: str):
        super().__init__(message)
        self.extras, self.compile_s = extras, compile_s


# --- compile ---------------------------------------------------------------------------------
@dataclasses.dataclass
class AotResult:
    topology: str
    mesh_shape: dict[str, int]
    num_devices: int
    compiled: Any
    memory: dict[str, float]  # per device, bytes
    hbm_bytes: float | None  # per device capacity, None for local devices
    trainable_params: int
    frozen_params: int
    flops_per_step: float | None
    lower_s: float
    compile_s: float
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def fits(self) -> bool | None:
        return None if not self.hbm_bytes else self.peak_bytes <= self.hbm_bytes

    @property
    def peak_bytes(self) -> float:
        return self.memory["total_bytes"]

    def summary(self) -> str:
        m = self.memory
        lines = [
            f"topology {self.topology}: {self.num_devices} devices, mesh {self.mesh_shape}",
            f"params: {self.trainable_params / 1e6:.2f} M trainable, {self.frozen_params / 1e9:.3f} B frozen",
            f"per-device memory (compiled.memory_analysis): arguments {_fmt(m['argument_bytes'])}, "
            f"outputs {_fmt(m['output_bytes'])}, aliased {_fmt(m['alias_bytes'])}, "
            f"temporaries {_fmt(m['temp_bytes'])}, code {_fmt(m['code_bytes'])}",
            f"per-device total {_fmt(m['total_bytes'])}"
            + (f" of {self.hbm_bytes / GiB:.0f} GiB HBM ({100 * m['total_bytes'] / self.hbm_bytes:.0f}%)"
               if self.hbm_bytes else ""),
            f"lower {self.lower_s:.1f} s, compile {self.compile_s:.1f} s",
        ]
        if self.flops_per_step:
            lines.append(f"model FLOPs per step {self.flops_per_step:.3e} "
                         f"({self.flops_per_step / self.num_devices:.3e} per device)")
        if self.hbm_bytes and m["total_bytes"] > self.hbm_bytes:
            lines.append("WARNING: does not fit in HBM; shard more (mesh.shape), shorten data.seq_len or "
                         "lower data.global_batch / raise train.grad_accum_steps")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {**self.extras, "topology": self.topology, "mesh": self.mesh_shape, "num_devices": self.num_devices,
                "memory_bytes": self.memory, "hbm_bytes": self.hbm_bytes, "fits": self.fits,
                "memory_gib_per_device": round(self.peak_bytes / GiB, 3),
                "hbm_fraction": round(self.peak_bytes / self.hbm_bytes, 4) if self.hbm_bytes else None,
                "trainable_params": self.trainable_params, "frozen_params": self.frozen_params,
                "flops_per_step": self.flops_per_step, "lower_s": self.lower_s, "compile_s": self.compile_s}


def _fmt(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= 0.1 * GiB else f"{n / 2**20:.2f} MiB"


def memory_summary(compiled: Any) -> dict[str, float]:
    """Per-device bytes from ``compiled.memory_analysis()``; the total counts donated (aliased)
    buffers once: arguments + outputs - aliased + temporaries + generated code."""
    ma = compiled.memory_analysis()
    if ma is None:
        raise RuntimeError("this backend gives no memory analysis for the compiled step")
    get = lambda name: float(getattr(ma, name, 0) or 0)  # noqa: E731
    out = {
        "argument_bytes": get("argument_size_in_bytes"), "output_bytes": get("output_size_in_bytes"),
        "alias_bytes": get("alias_size_in_bytes"), "temp_bytes": get("temp_size_in_bytes"),
        "code_bytes": get("generated_code_size_in_bytes"),
    }
    out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
                          + out["code_bytes"])
    return out


def _count(tree: Any) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "shape")))


def _with_sharding(tree: Any, shardings: Any) -> Any:
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


@dataclasses.dataclass
class PreparedStep:
    """Everything of a train step but its weights: the jitted step with explicit shardings, the
    abstract train state / frozen state / micro-batched batch and their shardings. The AOT
    compile lowers it; ``bench/accelerator.py`` fills it with real arrays and runs it."""

    cfg: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    rules: Any
    spec: ModelSpec
    abstract: nnx.Module
    tx: Any
    state: Any
    frozen: Any
    batch: dict[str, jax.ShapeDtypeStruct]
    state_sh: Any
    frozen_sh: Any
    batch_sh: dict[str, Any]
    step: Callable


def prepare_train_step(cfg: ml_collections.ConfigDict, devices: Sequence[Any], num_slices: int = 1) -> PreparedStep:
    """The model of ``cfg.model.builder`` built abstractly, split into trainables and frozen
    state, every sharding derived from the logical-axis rules, the step jitted (state donated)."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())  # unlocked copy
    builder = cfg.model.get("builder") if "model" in cfg else None
    if not builder:
        raise ValueError("this config has no model.builder, so there is no train step to compile; use "
                         "configs/vlm3r_7b.py or a configs/*_aot.py, or set --config.model.builder to one of "
                         f"{builder_names()}")
    if "train" not in cfg or "optim" not in cfg:
        raise ValueError("the config needs train and optim sections (see configs/vlm3r_7b.py)")
    accum = int(cfg.train.get("grad_accum_steps", 1))
    if "data" in cfg and not cfg.data.get("global_batch", 0):
        cfg.data.global_batch = len(devices) * accum  # one row per device per micro-batch
    dcn = math.prod(sharding.dcn_from_config(cfg.mesh).values())
    if num_slices > 1 and dcn == 1:
        cfg.mesh.dcn_data = num_slices  # data parallel across slices, as MaxText does by default
    elif dcn != num_slices:
        raise ValueError(f"mesh.dcn_data x mesh.dcn_fsdp = {dcn} but --num_slices is {num_slices}; make them equal")
    mesh = sharding.mesh_from_config(cfg.mesh, devices=devices)
    rules = sharding.rules_from_config(cfg.mesh.get("rules"))
    spec = get_model_builder(builder)(cfg)
    tc = cfg.train

    abstract = nnx.eval_shape(spec.factory)
    abstract.train()
    graphdef, params, frozen = split_trainable(abstract, list(tc.trainable), include_lora=tc.get("train_lora", True))
    tx, schedule = make_optimizer(cfg.optim, tc.steps)
    state = jax.eval_shape(lambda p: TrainState.create(p, tx, seed=tc.get("seed", 0)), params)
    state_sh = sharding.state_shardings(state, mesh, rules)
    frozen_sh = sharding.state_shardings(frozen, mesh, rules)

    def micro(x: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
        if x.shape[0] % accum:
            raise ValueError(f"global batch {x.shape[0]} is not divisible by grad_accum_steps={accum}")
        return jax.ShapeDtypeStruct((accum, x.shape[0] // accum) + x.shape[1:], x.dtype)

    batch = {k: micro(v) for k, v in spec.batch.items()}
    batch_sh = {}
    for k, v in batch.items():
        sharding.check_batch_divides(v.shape[1], mesh, rules, f"micro-batch of {k!r}")
        names = (None, "batch") + (None,) * (len(v.shape) - 2)
        batch_sh[k] = jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(names, v.shape, mesh, rules))

    step = jit_train_step(make_train_step(graphdef, tx, spec.loss_fn, schedule), state_sh, frozen_sh, batch_sh)
    return PreparedStep(cfg, mesh, rules, spec, abstract, tx, state, frozen, batch, state_sh, frozen_sh, batch_sh, step)


def compile_train_step(cfg: ml_collections.ConfigDict, topology: str = "cpu",
                       devices: Sequence[Any] | None = None, num_slices: int = 1) -> AotResult:
    """Lowers and compiles ``make_train_step`` for ``topology`` (``num_slices`` of them joined
    over DCN) with the shardings the real run uses (params/optimizer state from logical axes,
    batch over ``batch``, old state donated)."""
    devices = list(devices) if devices is not None else topology_devices(topology, num_slices)
    p = prepare_train_step(cfg, devices, num_slices)
    mesh, rules, spec, abstract, step = p.mesh, p.rules, p.spec, p.abstract, p.step
    state, state_sh, frozen, frozen_sh, batch, batch_sh = p.state, p.state_sh, p.frozen, p.frozen_sh, p.batch, p.batch_sh
    params = state.params

    # attention_impl="auto" must resolve for the target devices, not for this (CPU) host
    with sharding.use_mesh(mesh, rules), target_platform(devices[0].platform):
        extras = {k: (v() if callable(v) else v) for k, v in spec.extras.items()}
        t0 = time.perf_counter()
        lowered = step.lower(_with_sharding(state, state_sh), _with_sharding(frozen, frozen_sh),
                             _with_sharding(batch, batch_sh))
        t1 = time.perf_counter()
        try:
            compiled = lowered.compile()
        except Exception as e:  # the TPU compiler refuses programs that exceed HBM
            if "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e):
                raise AotOutOfMemoryError(extras, time.perf_counter() - t1,
                    f"{topology} (mesh {dict(mesh.shape)}): the train step does not fit in HBM: {e}. Shard more "
                    "(mesh.shape), shorten data.seq_len, lower data.global_batch / raise "
                    "train.grad_accum_steps, or rematerialize layers."
                ) from e
            raise
        t2 = time.perf_counter()
    hbm = TPU_TOPOLOGIES[topology].hbm_gib * GiB if topology in TPU_TOPOLOGIES else None
    tokens = float(np.prod(next(iter(spec.batch.values())).shape[:2]))
    return AotResult(
        topology=topology if num_slices == 1 else f"{num_slices}x{topology}", mesh_shape={k: int(v) for k, v in mesh.shape.items()}, num_devices=len(devices),
        compiled=compiled, memory=memory_summary(compiled), hbm_bytes=hbm,
        trainable_params=_count(params), frozen_params=_count(nnx.state(frozen, nnx.Param)),
        flops_per_step=(spec.step_flops(abstract) if spec.step_flops is not None
                        else spec.flops_per_token * tokens if spec.flops_per_token else None),
        lower_s=t1 - t0, compile_s=t2 - t1, extras=extras,
    )
