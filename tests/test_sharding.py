"""Mesh construction and logical-axis rules (8 fake CPU devices, set in conftest)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from vlm3r_jax import sharding
from vlm3r_jax.layers import Embed, Linear, RMSNorm


def test_eight_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize(
    "shape,expect",
    [({"data": -1}, (8, 1, 1)), ({"fsdp": 2, "tensor": 4}, (1, 2, 4)), ({"data": 2, "fsdp": -1, "tensor": 2}, (2, 2, 2))],
)
def test_make_mesh(shape, expect):
    mesh = sharding.make_mesh(shape)
    assert tuple(mesh.shape[a] for a in sharding.MESH_AXES) == expect
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_make_mesh_errors():
    with pytest.raises(ValueError, match="unknown mesh axes"):
        sharding.make_mesh({"model": 2})
    with pytest.raises(ValueError, match="at most one"):
        sharding.make_mesh({"data": -1, "fsdp": -1})
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh({"data": 4, "fsdp": 4})


def test_logical_to_spec_rules_and_divisibility():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert sharding.logical_to_spec(("embed", "mlp"), (8, 6), mesh) == P("fsdp", "tensor")
    # 7 is not divisible by tensor=2 -> replicated instead of failing
    assert sharding.logical_to_spec(("embed", "mlp"), (8, 7), mesh) == P("fsdp", None)
    # one mesh axis at most once per array
    assert sharding.logical_to_spec(("heads", "mlp"), (4, 4), mesh) == P("tensor", None)
    rules = [("embed", None), ("mlp", ["fsdp", "tensor"])]
    assert sharding.logical_to_spec(("embed", "mlp"), (8, 8), mesh, sharding.rules_from_config(rules)) == P(
        None, ("fsdp", "tensor")
    )


class _Tiny(nnx.Module):
    def __init__(self, rngs):
        self.emb = Embed(16, 8, rngs=rngs)
        self.up = Linear(8, 12, axes=("embed", "mlp"), rngs=rngs)
        self.norm = RMSNorm(12)

    def __call__(self, ids):
        return self.norm(self.up(self.emb(ids)))


def test_sharded_forward_matches_single_device():
    model = _Tiny(nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    ids = jnp.arange(16).reshape(4, 4) % 16
    ref = nnx.merge(graphdef, state)(ids)

    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = sharding.shard_state(state, mesh)
    kernel = sharded["up"]["kernel"].get_value()
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (4, 6)

    def fwd(st, x):
        x = sharding.constrain(x, ("batch", None))
        return nnx.merge(graphdef, st)(x)

    with sharding.use_mesh(mesh):
        out = jax.jit(fwd)(sharded, sharding.shard_batch(np.asarray(ids), mesh))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6, atol=1e-6)


def test_constrain_is_noop_without_mesh():
    x = jnp.ones((4, 3))
    assert sharding.constrain(x, ("batch", None)) is x


def test_mesh_that_does_not_use_the_devices_is_one_clear_error():
    with pytest.raises(ValueError, match="mesh data=3 x fsdp=1 x tensor=1 needs 3 devices but 8 are available"):
        sharding.make_mesh({"data": 3})
    with pytest.raises(ValueError, match="8 devices do not divide by the fixed mesh axes data=-1 x fsdp=3"):
        sharding.make_mesh({"fsdp": 3})
    with pytest.raises(ValueError, match="8 devices do not split into 3 slices"):
        sharding.make_mesh({"data": -1}, dcn_shape={"data": 3})
    # fake CPU devices are one slice in one process: asking for two is refused, not guessed
    with pytest.raises(ValueError, match="asks for 2 slices.*set mesh.dcn_"):
        sharding.make_mesh({"data": -1}, dcn_shape={"data": 2})


def test_mesh_from_config_defaults_to_one_slice():
    from configs.common import mesh_config

    c = mesh_config()
    assert (c.dcn_data, c.dcn_fsdp) == (1, 1)
    c.shape = {"data": 2, "fsdp": -1, "tensor": 2}
    mesh = sharding.mesh_from_config(c)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert list(mesh.devices.flat) == jax.devices()  # create_device_mesh keeps CPU devices in order


def test_training_batch_must_split_over_the_data_axes():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    x = np.zeros((2, 6, 3), np.int32)  # [accum, micro-batch of 6, T]
    with pytest.raises(ValueError, match="micro-batch of 6 rows does not divide over the 4 data-parallel shards"):
        sharding.shard_batch(x, mesh, batch_axis=1, strict=True)
    assert sharding.shard_batch(x, mesh, batch_axis=1).sharding.is_fully_replicated  # inference: replicated
    assert sharding.shard_batch(np.zeros((2, 8, 3)), mesh, batch_axis=1, strict=True).sharding.spec == P(
        None, ("data", "fsdp"), None)
