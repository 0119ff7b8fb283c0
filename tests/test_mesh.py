"""ircore.mesh on the 8 virtual CPU devices of conftest: meshes with either axis layout, time-axis sharding,
padding, the fsdp rules and host-local <-> global batches."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ircore import mesh as mesh_lib


def test_default_mesh_is_one_time_axis_over_every_device():
    mesh = mesh_lib.make_mesh()
    assert mesh.axis_names == ("time",)
    assert dict(mesh.shape) == {"time": 8}
    assert list(mesh.devices.flat) == jax.devices()


@pytest.mark.parametrize("shape, expected", [(None, (8, 1)), ((-1, 1), (8, 1)), ((2, -1), (2, 4)),
                                             ((2, 4), (2, 4)), ((1, 8), (1, 8))])
def test_training_mesh_layouts(shape, expected):
    mesh = mesh_lib.make_mesh(mesh_lib.BATCH_AXES, shape)
    assert mesh.axis_names == ("data", "fsdp")
    assert tuple(mesh.shape.values()) == expected
    assert list(mesh.devices.flat) == jax.devices()  # devices in order: row-major over (data, fsdp)


def test_mesh_over_chosen_devices_and_a_single_axis_name():
    devices = jax.devices()[2:6]
    mesh = mesh_lib.make_mesh("batch", devices=devices)
    assert dict(mesh.shape) == {"batch": 4}
    assert list(mesh.devices.flat) == devices
    one = mesh_lib.make_mesh(mesh_lib.BATCH_AXES, (1, 1), devices=jax.devices()[:1])
    assert dict(one.shape) == {"data": 1, "fsdp": 1}


@pytest.mark.parametrize("args, kwargs, message", [
    (((),), {}, "at least one axis"),
    ((("a",),), {"devices": []}, "no devices"),
    ((("a",), (2, 4)), {}, "2 entries but 1 axis names"),
    ((("a", "b"), (-1, -1)), {}, "at most one -1"),
    ((("a", "b"), (3, -1)), {}, "cannot infer -1"),
    ((("a",), (6,)), {"devices": jax.devices()[:4]}, "needs 6 devices, got 4"),
])
def test_make_mesh_errors_are_one_line(args, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        mesh_lib.make_mesh(*args, **kwargs)
    assert "\n" not in str(err.value)


def test_time_sharding_splits_the_leading_axis():
    mesh = mesh_lib.make_mesh(("data", "time"), (2, 4))
    x = jax.device_put(jnp.arange(16.0).reshape(8, 2), mesh_lib.time_sharding(mesh, "time"))
    assert x.sharding.spec == P("time")
    assert {s.data.shape for s in x.addressable_shards} == {(2, 2)}  # 8 rows over 4, copied over "data"
    assert mesh_lib.time_sharding(mesh).spec == P("data")  # default: the first axis
    assert mesh_lib.num_shards(mesh_lib.time_sharding(mesh, "time")) == 4
    assert mesh_lib.num_shards(mesh_lib.replicated(mesh)) == 1
    assert mesh_lib.num_shards(None) == 1
    assert mesh_lib.replicated(mesh).is_fully_replicated
    with pytest.raises(ValueError, match=r"axis 'batch' not in mesh axes \('data', 'time'\)"):
        mesh_lib.time_sharding(mesh, "batch")


def test_padding_helpers():
    assert [mesh_lib.padded_length(n, 8) for n in (0, 1, 8, 9, 16)] == [0, 8, 8, 16, 16]
    with pytest.raises(ValueError, match="multiple must be >= 1, got 0"):
        mesh_lib.padded_length(3, 0)
    x = jnp.arange(10.0).reshape(5, 2) + 1.0
    padded = mesh_lib.pad_to_multiple(x, 4)
    assert padded.shape == (8, 2)
    np.testing.assert_array_equal(np.asarray(padded[5:]), np.zeros((3, 2)))
    np.testing.assert_array_equal(np.asarray(mesh_lib.unpad(padded, 5)), np.asarray(x))
    assert mesh_lib.pad_to_multiple(x, 5) is x
    along_1 = mesh_lib.pad_to_multiple(x, 3, axis=1)
    assert along_1.shape == (5, 3) and float(jnp.abs(along_1[:, 2]).max()) == 0.0
    np.testing.assert_array_equal(np.asarray(mesh_lib.unpad(along_1, 2, axis=1)), np.asarray(x))


def test_constrain_is_a_no_op_without_a_sharding():
    x = jnp.ones((8, 3))
    assert mesh_lib.constrain(x, None) is x
    sharding = mesh_lib.time_sharding(mesh_lib.make_mesh())
    y = jax.jit(lambda a: mesh_lib.constrain(a * 2, sharding))(x)
    assert y.sharding.spec == P("time")
    np.testing.assert_array_equal(np.asarray(y), 2 * np.ones((8, 3)))


def test_fsdp_rules():
    mesh = mesh_lib.make_mesh(mesh_lib.BATCH_AXES, (2, 4))
    assert mesh_lib.fsdp_spec((64, 32), mesh, 1024) == P("fsdp", None)  # the largest divisible dimension
    assert mesh_lib.fsdp_spec((3, 3, 8, 64), mesh, 1024) == P(None, None, None, "fsdp")
    assert mesh_lib.fsdp_spec((64, 64), mesh, 1024) == P(None, "fsdp")  # a tie goes to the later one
    assert mesh_lib.fsdp_spec((32,), mesh, 1024) == P()  # too small
    assert mesh_lib.fsdp_spec((32, 32), mesh, 1024) == P(None, "fsdp")  # exactly min_size is big enough
    assert mesh_lib.fsdp_spec((33, 35), mesh, 16) == P()  # nothing divisible
    assert mesh_lib.fsdp_spec((64, 32), mesh_lib.make_mesh(mesh_lib.BATCH_AXES, (8, 1)), 1) == P()  # fsdp = 1


def test_tree_shardings_and_put_replicated_or_sharded():
    mesh = mesh_lib.make_mesh(mesh_lib.BATCH_AXES, (2, 4))
    tree = {"w": np.arange(64 * 32, dtype=np.float32).reshape(64, 32), "b": np.arange(32, dtype=np.float32)}
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    shardings = mesh_lib.tree_shardings(abstract, mesh, 1024)
    assert shardings["w"].spec == P("fsdp", None) and shardings["b"].spec == P()
    placed = mesh_lib.put_replicated_or_sharded(tree, mesh, 1024)
    assert placed["w"].sharding.spec == P("fsdp", None)
    assert {s.data.shape for s in placed["w"].addressable_shards} == {(16, 32)}
    assert placed["b"].sharding.is_fully_replicated
    for name in tree:
        np.testing.assert_array_equal(np.asarray(placed[name]), tree[name])


def test_local_batch_rows_and_to_global():
    mesh = mesh_lib.make_mesh(mesh_lib.BATCH_AXES, (2, 4))
    assert mesh_lib.batch_sharding(mesh).spec == P(("data", "fsdp"))
    assert mesh_lib.local_batch_rows(mesh, 16) == (0, 16)  # one process owns every row
    with pytest.raises(ValueError, match="global batch 12 is not divisible by the 8 devices of the mesh"):
        mesh_lib.local_batch_rows(mesh, 12)
    local = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3), "y": np.arange(16, dtype=np.int32)}
    batch = mesh_lib.to_global(local, mesh, 16)
    assert batch["x"].shape == (16, 3) and batch["y"].dtype == np.int32
    for device, index in batch["x"].sharding.addressable_devices_indices_map((16, 3)).items():
        row = jax.devices().index(device)  # devices in mesh order: device k holds rows 2k, 2k + 1
        assert index[0] == slice(2 * row, 2 * row + 2)
    np.testing.assert_array_equal(np.asarray(batch["x"]), local["x"])
    np.testing.assert_array_equal(np.asarray(batch["y"]), local["y"])


def test_initialize_distributed_does_nothing_for_one_process(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
                 "TPU_WORKER_HOSTNAMES", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert mesh_lib.initialize_distributed() is False
