"""Device meshes and shardings used across the project.

* :func:`make_mesh` builds a :class:`jax.sharding.Mesh` with any axis names (default: every device on one
  ``"time"`` axis, the DeqIR samplers; the trainer uses :data:`BATCH_AXES` = ``("data", "fsdp")``).
* :func:`time_sharding` / :func:`replicated` give the two shardings the samplers use:
  arrays split along their leading axis, or copied on every device.
* :func:`pad_to_multiple` / :func:`unpad` pad the leading axis so it divides evenly over a mesh.
* Training (a ``("data", "fsdp")`` mesh): :func:`fsdp_spec` / :func:`tree_shardings` /
  :func:`put_replicated_or_sharded` split big parameter leaves over ``fsdp`` (ZeRO-3 style), and
  :func:`batch_sharding` / :func:`local_batch_rows` / :func:`to_global` turn this process's rows of a batch
  into global arrays split over ``data`` x ``fsdp``.
* :func:`initialize_distributed` wraps :func:`jax.distributed.initialize` for multi-host runs.
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DEFAULT_AXIS = "time"
DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


def make_mesh(
    axis_names: str | Sequence[str] = (DEFAULT_AXIS,),
    shape: Sequence[int] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Mesh over ``devices`` (default ``jax.devices()``) with the given axis names.

    ``shape`` defaults to all devices on the first axis and 1 on the others; a ``-1`` entry is inferred.
    """
    if isinstance(axis_names, str):
        axis_names = (axis_names,)
    axis_names = tuple(axis_names)
    if not axis_names:
        raise ValueError("make_mesh: axis_names must name at least one axis")
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh: no devices given")
    n = len(devices)
    if shape is None:
        shape = (n,) + (1,) * (len(axis_names) - 1)
    shape = list(shape)
    if len(shape) != len(axis_names):
        raise ValueError(
            f"make_mesh: shape {tuple(shape)} has {len(shape)} entries but {len(axis_names)} axis names"
        )
    if shape.count(-1) > 1:
        raise ValueError(f"make_mesh: at most one -1 allowed in shape {tuple(shape)}")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if known <= 0 or n % known:
            raise ValueError(f"make_mesh: cannot infer -1 in shape {tuple(shape)} for {n} devices")
        shape[shape.index(-1)] = n // known
    if math.prod(shape) != n:
        raise ValueError(f"make_mesh: shape {tuple(shape)} needs {math.prod(shape)} devices, got {n}")
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), axis_names)


def time_sharding(mesh: Mesh, axis_name: str | None = None) -> NamedSharding:
    """Sharding that splits an array's leading axis over ``axis_name`` (default: the mesh's first axis)."""
    axis_name = mesh.axis_names[0] if axis_name is None else axis_name
    if axis_name not in mesh.axis_names:
        raise ValueError(f"time_sharding: axis {axis_name!r} not in mesh axes {mesh.axis_names}")
    return NamedSharding(mesh, PartitionSpec(axis_name))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy of the array on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def num_shards(sharding: NamedSharding | None) -> int:
    """How many pieces ``sharding`` cuts the leading axis into (1 for ``None`` or replicated)."""
    if sharding is None:
        return 1
    spec = sharding.spec
    if len(spec) == 0 or spec[0] is None:
        return 1
    names = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
    return math.prod(sharding.mesh.shape[name] for name in names)


def padded_length(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n``."""
    if multiple < 1:
        raise ValueError(f"padded_length: multiple must be >= 1, got {multiple}")
    return -(-n // multiple) * multiple


def pad_to_multiple(x: jax.Array, multiple: int, axis: int = 0) -> jax.Array:
    """Zero-pad ``x`` along ``axis`` to a multiple of ``multiple`` (no copy when already a multiple)."""
    n = x.shape[axis]
    extra = padded_length(n, multiple) - n
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def unpad(x: jax.Array, length: int, axis: int = 0) -> jax.Array:
    """Inverse of :func:`pad_to_multiple`: keep the first ``length`` entries along ``axis``."""
    return jax.lax.slice_in_dim(x, 0, length, axis=axis)


def constrain(x: jax.Array, sharding: NamedSharding | None) -> jax.Array:
    """``with_sharding_constraint`` that is a no-op for ``sharding=None``."""
    if sharding is None:
        return x
    return jax.lax.with_sharding_constraint(x, sharding)


# ----------------------------------------------------------------------------------------------- training
def fsdp_spec(shape: tuple[int, ...], mesh: Mesh, min_size: int) -> PartitionSpec:
    """Splits the largest dimension of ``shape`` divisible by the ``fsdp`` size over ``fsdp`` when the leaf has
    at least ``min_size`` elements; else replicates (``PartitionSpec()``)."""
    n = mesh.shape[FSDP_AXIS]
    if n == 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    best = None
    for i, d in enumerate(shape):
        if d % n == 0 and (best is None or d >= shape[best]):
            best = i
    if best is None:
        return PartitionSpec()
    spec = [None] * len(shape)
    spec[best] = FSDP_AXIS
    return PartitionSpec(*spec)


def tree_shardings(tree: Any, mesh: Mesh, min_size: int) -> Any:
    """:func:`fsdp_spec` shardings for every leaf of ``tree`` (arrays or ``ShapeDtypeStruct``)."""
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(mesh, fsdp_spec(tuple(np.shape(x)), mesh, min_size)), tree
    )


def put_replicated_or_sharded(tree: Any, mesh: Mesh, min_size: int) -> Any:
    """Host arrays (identical on every process) -> device arrays with :func:`tree_shardings`."""
    shardings = tree_shardings(tree, mesh, min_size)
    return jax.tree_util.tree_map(
        lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx, x=x: np.asarray(x)[idx]),
        tree, shardings,
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data`` x ``fsdp``."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def local_batch_rows(mesh: Mesh, global_batch: int) -> tuple[int, int]:
    """``(start, stop)``: the rows of a global batch that live on this process's devices (contiguous)."""
    sharding = batch_sharding(mesh)
    if global_batch % sharding.num_devices:
        raise ValueError(
            f"global batch {global_batch} is not divisible by the {sharding.num_devices} devices of the mesh"
        )
    rows = set()
    for index in sharding.addressable_devices_indices_map((global_batch,)).values():
        rows.update(range(*index[0].indices(global_batch)))
    start, stop = min(rows), max(rows) + 1
    if len(rows) != stop - start:
        raise ValueError("this process's batch rows are not contiguous; order the mesh devices by process")
    return start, stop


def to_global(local: Any, mesh: Mesh, global_batch: int) -> Any:
    """Process-local batch (numpy leaves of shape ``(rows, ...)``, this process's rows) -> global arrays of
    shape ``(global_batch, ...)`` split over ``data`` x ``fsdp``."""
    sharding = batch_sharding(mesh)

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, (global_batch,) + x.shape[1:])

    return jax.tree_util.tree_map(one, local)


# ----------------------------------------------------------------------------------------------- processes
def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Start multi-host JAX when the environment asks for it; returns True if initialised.

    Arguments default to ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
    If none is set and no cluster (SLURM, TPU pod, ...) is detectable, nothing happens for a single
    process run. Calling it twice is harmless.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    cluster_env = any(k in env for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "OMPI_COMM_WORLD_SIZE"))
    if coordinator_address is None and num_processes is None and not cluster_env:
        return False
    if jax.distributed.is_initialized():
        return True
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    return True
