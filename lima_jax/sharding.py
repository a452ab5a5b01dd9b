"""Hosts, meshes, logical-to-mesh axis rules and sharded model creation.

The model names parameter axes logically (`vocab, embed, heads, kv_heads,
head_dim, mlp, layers`) and batch rows `batch`; this module is the one place that
maps those names onto the mesh axes `data, fsdp, tensor`. Default rules are FSDP
over `embed`, tensor parallelism over heads, MLP and vocabulary, and batch rows
over data and fsdp. It also joins the other hosts of a multi-host run
(`maybe_initialize_distributed`) before any mesh is made, and lets them wait for each other
(`sync_hosts`) and agree (`on_every_host`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import TYPE_CHECKING, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from flax.core import spmd
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lima_jax.errors import LimaError

if TYPE_CHECKING:
    import ml_collections

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# (logical axis, mesh axis or axes or None). Batch rows go over data and fsdp;
# parameters are sharded over fsdp on `embed` and over tensor on the rest.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("length", None),
)


class ShardingError(LimaError, ValueError):
    """A mesh or rule set that cannot be used; the message names the axis or rule."""


def mesh_shape(sizes: Mapping[str, int], device_count: int) -> dict[str, int]:
    """Resolves a mesh spec such as {'data': 1, 'fsdp': -1, 'tensor': 1} (-1 = the rest)."""
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise ShardingError(f"mesh: unknown axes {unknown}; the axes are {MESH_AXES}")
    resolved = {axis: int(sizes.get(axis, 1)) for axis in MESH_AXES}
    free = [axis for axis, size in resolved.items() if size == -1]
    if len(free) > 1:
        raise ShardingError(f"mesh: only one axis may be -1, got {free}")
    for axis, size in resolved.items():
        if size == 0 or size < -1:
            raise ShardingError(f"mesh.{axis}={size}: sizes are positive or -1 (= the rest)")
    fixed = math.prod(size for size in resolved.values() if size != -1)
    if free:
        if device_count % fixed:
            raise ShardingError(
                f"mesh: the fixed axes multiply to {fixed}, which does not divide the "
                f"{device_count} devices"
            )
        resolved[free[0]] = device_count // fixed
    if math.prod(resolved.values()) != device_count:
        raise ShardingError(
            f"mesh {resolved} needs {math.prod(resolved.values())} devices, "
            f"but {device_count} are available"
        )
    return resolved


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """Joins the other hosts with `jax.distributed.initialize` when the config or the
    environment asks for it (`distributed.initialize`: auto | yes | no)."""
    d = config.distributed
    if d.initialize == "no":
        return
    explicit = bool(d.coordinator_address)
    environment = (
        "JAX_COORDINATOR_ADDRESS" in os.environ
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
    )
    if d.initialize == "auto" and not (explicit or environment):
        return
    kwargs = {}
    if explicit:
        kwargs = dict(coordinator_address=d.coordinator_address,
                      num_processes=d.num_processes or None,
                      process_id=d.process_id if d.process_id >= 0 else None)
    if os.environ.get("JAX_PLATFORMS", "") == "cpu" or kwargs:
        # CPU processes exchange collectives over gloo (local multi-process runs, tests).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as err:
        if "already" not in str(err).lower():
            raise
    log.info("process %d of %d, %d local devices of %d", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


def sync_hosts(tag: str) -> None:
    """Every host waits here until all have reached the same `tag` (nothing on one host)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(tag)


def on_every_host(flag: bool) -> bool:
    """True when `flag` is true on every host (one host: `flag`)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `Mesh` with axes (data, fsdp, tensor) over `devices` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(sizes, len(devices))
    dims = tuple(shape[axis] for axis in MESH_AXES)
    try:
        device_array = mesh_utils.create_device_mesh(dims, devices=devices)
    except Exception:  # noqa: BLE001 - fake CPU devices and odd shapes have no topology
        device_array = np.asarray(devices).reshape(dims)
    return Mesh(device_array, MESH_AXES)


def _rules_dict(rules) -> dict[str, tuple[str, ...]]:
    table: dict[str, tuple[str, ...]] = {}
    for logical, mesh_axes in rules:
        if logical in table:
            raise ShardingError(f"sharding rules: logical axis {logical!r} appears twice")
        if mesh_axes is None:
            table[logical] = ()
        elif isinstance(mesh_axes, str):
            table[logical] = (mesh_axes,)
        else:
            table[logical] = tuple(mesh_axes)
        for axis in table[logical]:
            if axis not in MESH_AXES:
                raise ShardingError(
                    f"sharding rules: {logical!r} -> {axis!r} is not a mesh axis {MESH_AXES}"
                )
    return table


def logical_to_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules=DEFAULT_RULES,
) -> PartitionSpec:
    """The PartitionSpec for an array with these logical axes and shape.

    A dimension that the mesh axes do not divide evenly is replicated (logged),
    so for instance 8 KV heads still work on a tensor axis of 16. Two logical
    axes of one array mapped to the same mesh axis is an error.
    """
    table = _rules_dict(rules)
    used: dict[str, str] = {}
    spec = []
    for logical, dim in zip(logical_axes, shape):
        if logical is None:
            spec.append(None)
            continue
        if logical not in table:
            raise ShardingError(f"sharding rules: no rule for logical axis {logical!r}")
        mesh_axes = tuple(a for a in table[logical] if mesh.shape[a] > 1)
        for axis in mesh_axes:
            if axis in used:
                raise ShardingError(
                    f"sharding rules map both {used[axis]!r} and {logical!r} of axes "
                    f"{tuple(logical_axes)} to mesh axis {axis!r}"
                )
            used[axis] = logical
        size = math.prod(mesh.shape[a] for a in mesh_axes)
        if size > 1 and dim % size:
            log.info("replicating %r (size %d): mesh axes %s of size %d do not divide it",
                     logical, dim, mesh_axes, size)
            mesh_axes = ()
        spec.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
    return PartitionSpec(*spec)


def state_shardings(state, mesh: Mesh, rules=DEFAULT_RULES):
    """For an (abstract) nnx State, the same tree with a NamedSharding per Variable."""

    def sharding_for(variable):
        axes = variable.get_metadata().get("logical_axes")
        shape = variable.get_value().shape
        if axes is None:
            spec = PartitionSpec()
        else:
            spec = logical_to_spec(axes, shape, mesh, rules)
        return variable.replace(NamedSharding(mesh, spec))

    return jax.tree.map(sharding_for, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_axes(rules=DEFAULT_RULES) -> tuple[str, ...]:
    """The mesh axes the `batch` rule spreads batch rows over (none: every device has them all)."""
    return _rules_dict(rules).get("batch", ())


def batch_devices(mesh: Mesh, rules=DEFAULT_RULES) -> int:
    """How many devices share out the rows of a batch: the size of the `batch` rule's axes."""
    return math.prod(mesh.shape[axis] for axis in batch_axes(rules))


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES, rank: int = 2) -> NamedSharding:
    """Rows of a [B, T, ...] batch over the mesh axes the `batch` rule names."""
    # Axes of size 1 are left out of the spec: they split nothing.
    axes = tuple(a for a in batch_axes(rules) if mesh.shape[a] > 1)
    first = axes[0] if len(axes) == 1 else (axes or None)
    return NamedSharding(mesh, PartitionSpec(first, *([None] * (rank - 1))))


def abstract_with_shardings(abstract_tree, shardings):
    """ShapeDtypeStructs carrying the shardings the arrays should have (for a restore to land
    in, or an ahead-of-time compile with no arrays at all)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_tree, shardings)


def create_sharded(module_factory, mesh: Mesh, rules=DEFAULT_RULES):
    """Builds an nnx module directly in its sharded layout.

    Shape first (`nnx.eval_shape`), then shardings from the logical axes, then a
    jitted initialiser with those `out_shardings`, so every device computes only
    its slices and no parameter is ever whole on one device. `module_factory`
    takes no arguments and returns the module (seed it inside).
    """
    abstract = nnx.eval_shape(module_factory)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)

    def init():
        return nnx.state(module_factory())

    state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


@contextlib.contextmanager
def activation_context(mesh: Mesh, rules=DEFAULT_RULES):
    """Makes `mesh` and `rules` the context of code traced inside: the Pallas attention
    kernels read them to place themselves under `shard_map` (batch over the `batch`
    rule's axes, heads over the `heads` rule's). Trace (call or lower) jitted steps
    inside it."""
    with jax.set_mesh(mesh), spmd.logical_axis_rules(tuple(rules)):
        yield


def context_rules():
    """The logical rules of the enclosing `activation_context` (default: DEFAULT_RULES)."""
    rules = spmd.get_logical_axis_rules()
    return tuple(rules) if rules else DEFAULT_RULES
