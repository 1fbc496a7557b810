"""The device mesh, the shardings of batches and train state, and the batch-size check.

Every jaxmim mesh has the axes ``('data', 'fsdp', 'model')`` (:data:`jaxmim.sharding.MESH_AXES`),
sized by ``config.mesh`` (``data=-1`` takes the devices the other axes leave). The batch is split
over ``('data', 'fsdp')``; parameters, optimizer state and EMA are laid out by the logical-axis
rules of :mod:`jaxmim.sharding` (``config.mesh.layout``: ``dp`` replicates them, today's default,
``fsdp`` splits them over ``fsdp``, ``fsdp_tp`` also over ``model``). Everything that places
arrays on devices goes through this module and :mod:`jaxmim.sharding`, so a different layout
changes the config, not the loops.

Sources: ``jax.make_mesh`` with explicit ``axis_types`` and ``NamedSharding`` / ``PartitionSpec``
(JAX's "Distributed arrays and automatic parallelization" guide);
``jax.experimental.mesh_utils.create_hybrid_device_mesh`` for multi-slice (DCN x ICI) meshes and
MaxText's ``dcn_data_parallelism`` (AI-Hypercomputer/maxtext ``src/MaxText/maxtext_utils.py``
``create_device_mesh``); ``jax.make_array_from_process_local_data`` for multi-process batches
(JAX multi-process guide).
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxmim import ops
from jaxmim.ops import CPU_COMPILER_OPTIONS  # noqa: F401  (re-exported)
from jaxmim.sharding import BATCH_AXES, MESH_AXES

__all__ = ['make_mesh', 'mesh_shape', 'CPU_COMPILER_OPTIONS', 'step_compiler_options', 'batch_sharding',
           'replicated', 'batch_size_divisor', 'data_shards', 'global_batch', 'check_batch_sizes',
           'parse_mesh_flag']

_AXIS_TYPES = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)


def _field(mesh_config, key: str, default: int) -> int:
    if mesh_config is None:
        return default
    value = mesh_config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and not (value == -1 and key in MESH_AXES)):
        accepted = 'a positive integer, or -1 for the remaining devices' if key in MESH_AXES else 'a positive integer'
        raise ValueError(f'config.mesh.{key}={value!r}: must be {accepted}')
    return value


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
    """The ``(data, fsdp, model)`` sizes ``config.mesh`` asks for on ``num_devices`` devices: at
    most one axis may be -1 (the devices the others leave); None is ``(num_devices, 1, 1)``.

    Raises:
      ValueError: naming ``config.mesh``: sizes that do not multiply to the device count, more than
        one -1, a non-positive size, or ``dcn_data`` that does not divide ``data``.
    """
    sizes = [_field(mesh_config, a, -1 if a == 'data' else 1) for a in MESH_AXES]
    free = [i for i, v in enumerate(sizes) if v == -1]
    if len(free) > 1:
        raise ValueError(f'config.mesh: only one of {MESH_AXES} may be -1, got '
                         f'{dict(zip(MESH_AXES, sizes))}')
    fixed = math.prod(v for v in sizes if v != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(f'config.mesh: {" x ".join(f"{a}={v}" for a, v in zip(MESH_AXES, sizes) if v != -1)} '
                             f'= {fixed} does not divide the {num_devices} devices')
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ValueError(f'config.mesh: data x fsdp x model = {" x ".join(map(str, sizes))} = {math.prod(sizes)} '
                         f'does not match the {num_devices} devices (use -1 for one axis to take the rest)')
    dcn = _field(mesh_config, 'dcn_data', 1)
    if sizes[0] % dcn:
        raise ValueError(f'config.mesh.dcn_data={dcn} must divide the data axis size {sizes[0]} '
                         f'(data = dcn_data slices x data parallelism within a slice)')
    return tuple(sizes)


def make_mesh(devices=None, mesh_config=None) -> jax.sharding.Mesh:
    """The ``('data', 'fsdp', 'model')`` mesh over ``devices`` (default: every device of every
    process) with the sizes of ``mesh_config`` (``config.mesh``; None: all devices on ``data``),
    axis types ``Auto``.

    ``mesh_config.dcn_data > 1`` (multi-slice TPU, or several GPU hosts whose data-center network
    is slower than the links within a host) builds a hybrid mesh: the ``data`` axis is
    ``dcn_data`` slices (granules: slices where the devices span several ``slice_index``
    values, i.e. TPU slices or hosts, else processes) times the data parallelism within one,
    so that only the gradient reduction crosses the slow network.

    Raises:
      ValueError: see :func:`mesh_shape`.
    """
    devices = list(devices) if devices is not None else jax.devices()
    shape = mesh_shape(mesh_config, len(devices))
    dcn = _field(mesh_config, 'dcn_data', 1)
    if dcn > 1:
        from jax.experimental import mesh_utils
        ici = (shape[0] // dcn, shape[1], shape[2])
        # Slices are the granules where the devices span several: TPU slices, or hosts (XLA gives the
        # devices of one host, by boot id, one slice_index on GPU / CPU); else processes (several
        # processes of one host, e.g. launch/local_multiprocess.py, all carry slice_index 0).
        slices = {getattr(d, 'slice_index', None) for d in devices}
        granule_is_process = None in slices or len(slices) == 1
        grid = mesh_utils.create_hybrid_device_mesh(ici, (dcn, 1, 1), devices,
                                                     process_is_granule=granule_is_process)
        return jax.sharding.Mesh(grid, MESH_AXES, axis_types=_AXIS_TYPES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=_AXIS_TYPES, devices=devices)


def parse_mesh_flag(value: str) -> dict:
    """``'fsdp:8'`` / ``'dp'`` / ``'fsdp_tp:4x2'`` (layout, then the ``fsdp`` size or
    ``fsdp x model``; ``data`` takes the rest) as ``config.mesh`` overrides, for command-line
    tools (``python -m jaxmim.summary --mesh=fsdp:8``).

    Raises:
      ValueError: a malformed value (the accepted forms named).
    """
    from jaxmim.sharding import PRESETS
    layout, _, sizes = value.partition(':')
    if layout not in PRESETS:
        raise ValueError(f'--mesh={value!r}: layout {layout!r} unknown; accepted: {sorted(PRESETS)}, '
                         f'e.g. fsdp:8 or fsdp_tp:4x2')
    out = {'layout': layout, 'data': -1, 'fsdp': 1, 'model': 1}
    if sizes:
        try:
            parts = [int(v) for v in sizes.split('x')]
        except ValueError:
            parts = []
        if not 1 <= len(parts) <= 2 or min(parts) < 1:
            raise ValueError(f'--mesh={value!r}: sizes must be FSDP or FSDPxMODEL positive integers, e.g. fsdp_tp:4x2')
        out['fsdp'] = parts[0]
        out['model'] = parts[1] if len(parts) == 2 else 1
    return out


def step_compiler_options(mesh) -> dict[str, str] | None:
    """The ``compiler_options`` of the jitted train / eval steps on ``mesh``:
    ``jaxmim.ops.compiler_options(jaxmim.ops.mesh_platform(mesh))``, i.e. a copy of
    :data:`jaxmim.ops.CPU_COMPILER_OPTIONS` (re-exported here) on a CPU mesh, unless ``XLA_FLAGS``
    sets the option itself or ``JAXMIM_PORTABLE_OPS=1``; None on accelerators. The same predicate
    (:func:`jaxmim.ops.form`) picks the ops' forms in the step."""
    return ops.compiler_options(ops.mesh_platform(mesh))


def _batch_axes(mesh) -> tuple[str, ...]:
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_sharding(mesh) -> NamedSharding:
    """Batch arrays ``(B, ...)`` are split on their leading axis over ``('data', 'fsdp')`` (the
    axes of those the mesh has; a ``model`` axis holds a copy of the batch)."""
    return NamedSharding(mesh, P(_batch_axes(mesh)))


def batch_size_divisor(mesh) -> int:
    """How many pieces the batch is split into: the product of the mesh's batch axes."""
    sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
    return math.prod(sizes[a] for a in _batch_axes(mesh))


def replicated(mesh) -> NamedSharding:
    """A copy on every device of ``mesh`` (metrics, scalars; the whole state under ``dp``)."""
    return NamedSharding(mesh, P())


@functools.cache   # once per mesh: global_batch asks at every step
def data_shards(mesh) -> tuple[int, int]:
    """``(index, count)``: which of the ``count`` distinct parts of every global batch this process
    loads (its data split, its masking-input stream, its rows of the batch).

    A process loads the rows of the batch its devices hold. Processes whose devices hold the same
    rows (a ``model`` axis across processes, e.g. one process per GPU under ``fsdp_tp``) are
    replicas of one part: they must load identical data, so they share an index. With every
    process holding rows of its own this is ``(jax.process_index(), jax.process_count())``; with
    replicas, parts are numbered by the lowest process index among their holders. Pass it to
    :func:`jaxmim.data.pipeline.create_split` as ``(process_index, process_count)``.

    Raises:
      ValueError: the processes' rows overlap without being equal, a process's rows are not one
        contiguous run, the parts differ in size, or this process has no device in ``mesh``.
    """
    n = batch_size_divisor(mesh)
    rows_of: dict[int, set[int]] = {}
    for device, (rows, *_) in batch_sharding(mesh).devices_indices_map((n,)).items():
        rows_of.setdefault(device.process_index, set()).update(range(*rows.indices(n)))
    me = jax.process_index()
    if me not in rows_of:
        raise ValueError(f'process {me} has no device in the mesh {dict(zip(mesh.axis_names, mesh.devices.shape))}')
    parts = {frozenset(r) for r in rows_of.values()}
    if sum(len(r) for r in parts) != n or len({len(r) for r in parts}) != 1 or any(
            max(r) - min(r) + 1 != len(r) for r in parts):
        raise ValueError(
            f'the mesh {dict(zip(mesh.axis_names, mesh.devices.shape))} gives processes rows of the batch '
            f'that overlap partly, differ in number or are not contiguous '
            f'({ {p: sorted(r) for p, r in sorted(rows_of.items())} } of the {n} pieces split over data x fsdp); '
            'order the devices so that each process holds whole pieces of the data and fsdp axes')
    order = sorted(parts, key=lambda r: min(p for p, rows in rows_of.items() if rows == r))
    return order.index(frozenset(rows_of[me])), len(order)


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles the per-process NumPy batch ``{name: (B / count, ...)}`` (``count`` the parts of
    :func:`data_shards`; replica processes pass identical data) into global arrays ``(B, ...)``
    sharded as ``sharding``."""
    _, count = data_shards(sharding.mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v, (v.shape[0] * count,) + v.shape[1:])
            for k, v in local.items()}


def check_batch_sizes(config, mesh) -> None:
    """``config.batch_size`` (and ``eval_batch_size`` when fine-tuning) split evenly over the
    batch axes of ``mesh`` (``data x fsdp``) and so over the processes' distinct parts
    (:func:`data_shards`); ``batch_size`` also over ``accum_steps`` micro-batches, each split
    evenly over the batch axes.

    Raises:
      ValueError: naming the field, its value and the ``data x fsdp`` size; a mesh whose
        processes hold overlapping rows of the batch (:func:`data_shards`).
    """
    data_shards(mesh)
    n = batch_size_divisor(mesh)   # a multiple of the processes' distinct parts
    fields = [('batch_size', config.batch_size)] + (
        [('eval_batch_size', config.eval_batch_size)] if config.mode == 'finetune' else [])
    for field, value in fields:
        if value < 1 or value % n:
            raise ValueError(f'config.{field}={value} must be a positive multiple of data x fsdp = {n} '
                             f'(batches are split evenly over the data and fsdp mesh axes, and so over '
                             f'the processes)')
    accum = int(config.get('accum_steps', 1))
    if config.batch_size % (accum * n):
        raise ValueError(f'config.batch_size={config.batch_size} must be a multiple of config.accum_steps={accum} '
                         f'times data x fsdp = {n} (each micro-batch is split evenly over the data and fsdp mesh axes)')
